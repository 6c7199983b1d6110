/* memtap's subcommands. Adding one:
 *  1. write reader/cmd-<name>.c with int cmd_<name>(int argc, char **argv)
 *     (argv[0] is the subcommand's name; return the exit status);
 *  2. declare it here and add a row to the table in reader/main.c;
 *  3. add the file to reader_sources in meson.build;
 *  4. tests in tests/integration/, a page in docs/. */
#ifndef MT_COMMANDS_H
#define MT_COMMANDS_H

int cmd_run(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_summary(int argc, char **argv);
int cmd_tree(int argc, char **argv);
int cmd_table(int argc, char **argv);
int cmd_flamegraph(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_parse(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_collect(int argc, char **argv);
int cmd_extract(int argc, char **argv);

#endif
