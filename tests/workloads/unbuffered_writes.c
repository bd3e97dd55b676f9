/* Skills e2e workload: writes each small record to stdout with its own write(2). Anti-pattern:
 * `unbuffered-writes`; its patch turns the write into a buffered fwrite to stdout. Built by the
 * test with `cc -g -O0 -fno-omit-frame-pointer`. Usage: `unbuffered_writes_c SECONDS [RECORDS] > FILE`:
 * runs for SECONDS, or stops after RECORDS records (rounded up to a thousand) when given, a fixed
 * amount of work for `cargo xtask bench`. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void emit_records(const char *rec, long count) {
    size_t len = strlen(rec);
    for (long i = 0; i < count; i++) {
        write(1, rec, len); /* HOT: one system call per record */
    }
}

int main(int argc, char **argv) {
    long secs = argc > 1 ? atol(argv[1]) : 10;
    long records = argc > 2 ? atol(argv[2]) : -1;
    time_t end = time(NULL) + secs;
    for (long n = 0; (records < 0 || n < records) && time(NULL) < end; n += 1000) {
        emit_records("id=42 status=ok\n", 1000);
    }
    return 0;
}
