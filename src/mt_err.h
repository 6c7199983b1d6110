/* Error codes of the memtap library (src/). The library never prints;
 * callers turn a code into a message with mt_strerror(). */
#ifndef MT_ERR_H
#define MT_ERR_H

enum mt_err {
    MT_OK = 0,
    MT_E_IO = -1,          /* read/write failed: see errno */
    MT_E_NOMEM = -2,
    MT_E_NOT_CAPTURE = -3, /* no memtap magic: not a capture file */
    MT_E_VERSION = -4,     /* written by a newer format version */
    MT_E_CORRUPT = -5,     /* a checksum or a record does not decode */
    MT_E_TRUNCATED = -6,   /* ends inside a block: the writer was killed */
    MT_E_EMPTY = -7,       /* zero bytes */
    MT_E_EXISTS = -8,      /* output exists */
    MT_E_LINK = -9,        /* output is a symbolic link: not followed */
    MT_E_NO_READER = -10,  /* output is a FIFO that no process reads */
};

/* A short lowercase description of err; static, never NULL. */
const char *mt_strerror(int err);

#endif
