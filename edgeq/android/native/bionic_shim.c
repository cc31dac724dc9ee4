/* Android's C library (bionic) on Debian's glibc, for running the APK's libexecutorch.so under
 * qemu-aarch64. Built as libc.so (preloaded, so its definitions come first), beside empty libm.so,
 * libdl.so, liblog.so and libandroid.so: the sonames the libraries need, carrying bionic's symbol
 * version LIBC. The check makes the libraries' references unversioned in its copies
 * (runtime_check.clear_bionic_versions), so glibc's own malloc and the rest serve them; only what
 * bionic has and glibc lacks, or has with other numbers or layouts, is here. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Not <string.h>: with _GNU_SOURCE it declares the GNU strerror_r, which bionic's is not. */
size_t strlen(const char *);
char *strchr(const char *, int);
char *strrchr(const char *, int);
void *memcpy(void *, const void *, size_t);
extern int __xpg_strerror_r(int, char *, size_t);
extern long __sysconf(int);

int *__errno(void) { return __errno_location(); }

/* bionic's stdin/stdout/stderr array; code that names it directly is not run here. 152: sizeof(FILE). */
char __sF[3 * 152];

/* bionic's strerror_r is POSIX's; glibc's plain name is the GNU one. */
int strerror_r(int error, char *buf, size_t n) { return __xpg_strerror_r(error, buf, n); }
char *__gnu_strerror_r(int error, char *buf, size_t n) {
    __xpg_strerror_r(error, buf, n);
    return buf;
}

/* _FORTIFY_SOURCE checks glibc does not have. */
static void overflow(const char *where) {
    fprintf(stderr, "bionic shim: buffer overflow detected in %s\n", where);
    abort();
}
size_t __strlen_chk(const char *s, size_t size) {
    size_t n = strlen(s);
    if (n >= size) overflow("strlen");
    return n;
}
char *__strchr_chk(const char *s, int c, size_t size) {
    (void)size;
    return strchr(s, c);
}
char *__strrchr_chk(const char *s, int c, size_t size) {
    (void)size;
    return strrchr(s, c);
}
ssize_t __write_chk(int fd, const void *buf, size_t count, size_t size) {
    if (count > size) overflow("write");
    return write(fd, buf, count);
}

/* bionic numbers sysconf's names differently from glibc; the ones a runtime asks for. */
long sysconf(int name) {
    switch (name) {
    case 0x06: return __sysconf(_SC_CLK_TCK);
    case 0x27: case 0x28: return __sysconf(_SC_PAGESIZE);
    case 0x60: return __sysconf(_SC_NPROCESSORS_CONF);
    case 0x61: return __sysconf(_SC_NPROCESSORS_ONLN);
    case 0x62: return __sysconf(_SC_PHYS_PAGES);
    case 0x63: return __sysconf(_SC_AVPHYS_PAGES);
    }
    fprintf(stderr, "bionic shim: sysconf(0x%x) is not mapped\n", name);
    errno = EINVAL;
    return -1;
}

/* bionic's pthread_mutex_t is 40 bytes, glibc's 48, and glibc's init clears all 48; a normal or
 * recursive mutex uses only the first 24, so initialize a full-size one and copy those over. */
int pthread_mutex_init(pthread_mutex_t *mutex, const pthread_mutexattr_t *attr) {
    static int (*glibc_init)(pthread_mutex_t *, const pthread_mutexattr_t *);
    if (!glibc_init)
        glibc_init = (int (*)(pthread_mutex_t *, const pthread_mutexattr_t *))dlsym(RTLD_NEXT, "pthread_mutex_init");
    pthread_mutex_t full;
    int rc = glibc_init(&full, attr);
    memcpy(mutex, &full, 40);
    return rc;
}

int __system_property_get(const char *name, char *value) {
    (void)name;
    value[0] = '\0';
    return 0;
}

void android_set_abort_message(const char *message) { fprintf(stderr, "abort message: %s\n", message); }

/* liblog: to stderr, one line per message, as logcat would show it. */
static const char PRIORITY[] = "??VDIWEFS";
int __android_log_write(int priority, const char *tag, const char *text) {
    char p = priority >= 0 && priority < (int)sizeof(PRIORITY) - 1 ? PRIORITY[priority] : '?';
    return fprintf(stderr, "%c/%s: %s\n", p, tag ? tag : "", text ? text : "");
}
int __android_log_vprint(int priority, const char *tag, const char *format, va_list args) {
    char text[4096];
    vsnprintf(text, sizeof text, format, args);
    return __android_log_write(priority, tag, text);
}
void __android_log_assert(const char *condition, const char *tag, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "F/%s: assertion failed: %s: ", tag ? tag : "", condition ? condition : "");
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    abort();
}
int __android_log_print(int priority, const char *tag, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = __android_log_vprint(priority, tag, format, args);
    va_end(args);
    return n;
}
