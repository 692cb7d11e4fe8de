/*
 * bundle-install launcher: the first few hundred KB of the portable frozen installer.
 *
 * The installer proper (PyInstaller onefile, wrapped by staticx) is appended to this
 * static executable. Both of its loaders unpack shared libraries into $TMPDIR and execute
 * them from there, so on a manager whose /tmp is mounted noexec (CIS hardening does this)
 * they die with exit 127 and a dynamic-linker error that names neither cause nor fix
 * (pyinstaller issues #3870, #4548). This launcher runs first and:
 *
 *   1. picks a temporary directory that is writable AND allows executing files: $TMPDIR if
 *      it qualifies, else /tmp, /var/tmp, then the directory holding this binary; and
 *      exports it as TMPDIR for the loaders;
 *   2. writes the appended payload into that directory and executes it (an exec, not a
 *      child: the process id stays the same, so signals and `kill PID` reach the installer
 *      itself); the installer deletes the file as it starts (JUMPKIT_LAUNCHER_UNLINK).
 *      Not memfd_create + fexecve: staticx re-opens its own executable by the path that
 *      /proc/self/exe names, which a memfd does not have;
 *   3. when no directory qualifies, prints ONE line naming the fix and exits 4 (the
 *      installer's "precondition failed, nothing changed").
 *
 * Layout of the file: [this ELF][payload][trailer: "JKPAYLD1" u64le offset u64le size].
 * Built static (gcc -static), so it needs no libc on the target.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#define MAGIC "JKPAYLD1"
#define TRAILER 24
#define EXIT_PRECONDITION 4

extern char **environ;

static void die(const char *what)
{
    fprintf(stderr, "bundle-install: cannot start: %s: %s\n", what, strerror(errno));
    exit(EXIT_PRECONDITION);
}

static int usable(const char *dir)
{
    struct stat st;
    struct statvfs vfs;

    if (dir == NULL || dir[0] != '/')
        return 0;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    if (access(dir, W_OK | X_OK) != 0)
        return 0;
    if (statvfs(dir, &vfs) != 0)
        return 0;
    return (vfs.f_flag & ST_NOEXEC) == 0 && (vfs.f_flag & ST_RDONLY) == 0;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int copy_payload(int src, int dst, uint64_t offset, uint64_t size)
{
    static char buf[1 << 20];
    off_t pos = (off_t)offset;
    uint64_t left = size;

    while (left > 0) {
        size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
        ssize_t n = pread(src, buf, want, pos);
        if (n <= 0)
            return -1;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(dst, buf + done, (size_t)(n - done));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            done += w;
        }
        pos += n;
        left -= (uint64_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    static char self_dir[PATH_MAX];
    static char tmpfile[PATH_MAX];
    unsigned char trailer[TRAILER];
    const char *tmpdir = getenv("TMPDIR");
    const char *candidates[4];
    const char *chosen = NULL;
    ssize_t len;
    int self;

    self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (self < 0)
        die("cannot open /proc/self/exe (is /proc mounted?)");
    off_t end = lseek(self, 0, SEEK_END);
    if (end < TRAILER || pread(self, trailer, TRAILER, end - TRAILER) != TRAILER)
        die("cannot read the payload trailer");
    if (memcmp(trailer, MAGIC, 8) != 0) {
        errno = EINVAL;
        die("no payload appended (a bare launcher)");
    }
    uint64_t offset = le64(trailer + 8), size = le64(trailer + 16);
    if (offset + size + TRAILER != (uint64_t)end) {
        errno = EINVAL;
        die("payload trailer does not match the file size (truncated download?)");
    }

    len = readlink("/proc/self/exe", self_dir, sizeof self_dir - 1);
    if (len > 0) {
        self_dir[len] = '\0';
        char *slash = strrchr(self_dir, '/');
        if (slash != NULL && slash != self_dir)
            *slash = '\0';
    } else {
        self_dir[0] = '\0';
    }
    candidates[0] = tmpdir;
    candidates[1] = "/tmp";
    candidates[2] = "/var/tmp";
    candidates[3] = self_dir;
    for (int i = 0; i < 4 && chosen == NULL; i++)
        if (usable(candidates[i]))
            chosen = candidates[i];
    if (chosen == NULL) {
        fprintf(stderr,
                "bundle-install: cannot start: no writable temporary directory allows executing files "
                "(TMPDIR=%s, /tmp, /var/tmp and %s are noexec, read-only or missing); "
                "set TMPDIR to a writable directory on a filesystem mounted without noexec, "
                "e.g. TMPDIR=/root %s ...\n",
                tmpdir ? tmpdir : "(unset)", self_dir[0] ? self_dir : "this binary's directory", argv[0]);
        return EXIT_PRECONDITION;
    }
    if (tmpdir == NULL || strcmp(tmpdir, chosen) != 0)
        setenv("TMPDIR", chosen, 1);

    snprintf(tmpfile, sizeof tmpfile, "%s/.bundle-install-XXXXXX", chosen);
    int out = mkostemp(tmpfile, O_CLOEXEC);
    if (out < 0)
        die("cannot create a file in the temporary directory");
    if (copy_payload(self, out, offset, size) != 0 || fchmod(out, 0700) != 0 || close(out) != 0) {
        unlink(tmpfile);
        die("cannot write the payload");
    }
    setenv("JUMPKIT_LAUNCHER_UNLINK", tmpfile, 1);
    execve(tmpfile, argv, environ);
    unlink(tmpfile);
    die("cannot execute the payload");
    return EXIT_PRECONDITION;
}
