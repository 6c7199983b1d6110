#include "mt_err.h"

const char *mt_strerror(int err)
{
    switch (err) {
    case MT_OK: return "success";
    case MT_E_IO: return "input/output error";
    case MT_E_NOMEM: return "out of memory";
    case MT_E_NOT_CAPTURE: return "not a memtap capture";
    case MT_E_VERSION: return "written by a newer memtap (unknown format version)";
    case MT_E_CORRUPT: return "corrupt capture data";
    case MT_E_TRUNCATED: return "capture is truncated";
    case MT_E_EMPTY: return "file is empty";
    case MT_E_EXISTS: return "file exists";
    case MT_E_LINK: return "it is a symbolic link, which a capture is not written through";
    case MT_E_NO_READER: return "it is a FIFO that no process reads";
    }
    return "unknown error";
}
