/*
 * bundle-install launcher: the first few hundred KB of the portable frozen installer.
 *
 * Appended to this static executable is a tree (scripts/freeze/tree.py writes it):
 *
 *   lib/   the build host's dynamic loader, glibc and the few system libraries the
 *          installer links (harvested by staticx, with its libnssfix.so);
 *   app/   the PyInstaller one-dir build: the bootloader app/bundle-install and
 *          app/_internal/ (libpython, extension modules, their libraries, the PYZ).
 *
 * The installer runs as `lib/ld-linux-x86-64.so.2 --preload lib/libnssfix.so --library-path
 * lib:app/_internal app/bundle-install ARGS`: our own loader and glibc, so it runs on any x86-64 Linux
 * (RHEL 8's glibc 2.28 and older) and never loads a system library. This launcher:
 *
 *   1. KEPT: when the tree is already unpacked beside this binary (<self>.d, written by
 *      the installer when it becomes the manager's own: installer/resident.py) and its .id
 *      names this payload, it executes it from there: nothing is unpacked, one process,
 *      the process id stays the same (signals and `kill PID` reach the installer). It
 *      holds a shared flock on the tree's .id while it runs, so that a self-update never
 *      removes the files of a running installer.
 *      Measured: `--version` 0.04 s instead of 0.3 s, `status` 0.22 s instead of 0.47 s.
 *   2. PORTABLE (any other start): picks a temporary directory that is writable AND
 *      allows executing files ($TMPDIR if it qualifies, else /tmp, /var/tmp, then the
 *      directory holding this binary), unpacks the tree into a fresh directory there
 *      (one copy of ~60 MB; PyInstaller's one-file + staticx wrote ~100 MB in three
 *      steps), runs it as a child, forwards the catchable signals to it, removes the
 *      directory when it ends and exits with its status (or dies of its signal).
 *      When no directory qualifies it prints ONE line naming the fix and exits 4 (the
 *      installer's "precondition failed, nothing changed"): a noexec /tmp (CIS
 *      hardening) otherwise ends in a loader error naming neither cause nor fix.
 *
 * The PyInstaller bootloader, started through a loader, would restart itself through
 * that loader without --library-path (and so with the system's glibc) to put _internal
 * on LD_LIBRARY_PATH. It is told it already did: the variables of that restart are set
 * here (_PYI_PARENT_PROCESS_LEVEL=-1 with _PYI_ARCHIVE_FILE and LD_LIBRARY_PATH), and
 * PYINSTALLER_RESET_ENVIRONMENT, which would undo them, is dropped. tests/test_frozen.py
 * checks that the installer runs in an empty chroot (no system glibc to fall back on).
 *
 * Layout of the file: [this ELF][payload][trailer: "JKPAYLD2" u64le offset u64le size
 * <32-byte sha256 of the payload>]. Built static (gcc -static): it needs no libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#define MAGIC "JKPAYLD2"
#define TREE_MAGIC "JKTREE02"
#define TRAILER 56
#define EXIT_PRECONDITION 4
#define LOADER "lib/ld-linux-x86-64.so.2"

extern char **environ;

static pid_t child_pid = -1;

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

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int read_at(int fd, void *buf, size_t n, uint64_t pos)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)buf + done, n - done, (off_t)(pos + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const char *buf, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)w;
    }
    return 0;
}

/* A path from the payload: relative, no "..", no empty component (our own build wrote
 * it, and the trailer's size matched; this guards against a damaged file). */
static int safe_relpath(const char *p)
{
    if (p[0] == '\0' || p[0] == '/')
        return 0;
    for (const char *c = p; *c;) {
        const char *end = strchr(c, '/');
        size_t n = end ? (size_t)(end - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c += n;
        if (*c == '/')
            c++;
    }
    return 1;
}

/* The tree's entry stream, read across its zstd frames: a frame is read and decompressed
 * at once (the cuts are content-defined, at most 8 MiB of stream each), and an entry may
 * begin in one frame and end in another. */
struct stream {
    int fd;
    uint64_t pos, end, frames, next;
    const unsigned char *table;
    unsigned char *cbuf, *dbuf;
    size_t ccap, dcap, len, at;
};

static int next_frame(struct stream *s)
{
    if (s->next == s->frames)
        return -1;
    uint64_t csize = le(s->table + 16 * s->next, 8), dsize = le(s->table + 16 * s->next + 8, 8);
    s->next++;
    if (csize > s->end - s->pos || dsize == 0 || dsize > ((uint64_t)1 << 30))
        return -1;
    if (csize > s->ccap && !(s->cbuf = realloc(s->cbuf, s->ccap = csize)))
        return -1;
    if (dsize > s->dcap && !(s->dbuf = realloc(s->dbuf, s->dcap = dsize)))
        return -1;
    if (read_at(s->fd, s->cbuf, csize, s->pos) != 0 || ZSTD_decompress(s->dbuf, dsize, s->cbuf, csize) != dsize)
        return -1;
    s->pos += csize;
    s->len = (size_t)dsize;
    s->at = 0;
    return 0;
}

/* The next n bytes of the stream: copied to dst, or written to the file out when dst is NULL. */
static int take(struct stream *s, unsigned char *dst, int out, uint64_t n)
{
    while (n > 0) {
        if (s->at == s->len && next_frame(s) != 0)
            return -1;
        size_t piece = s->len - s->at < n ? s->len - s->at : (size_t)n;
        if (dst != NULL) {
            memcpy(dst, s->dbuf + s->at, piece);
            dst += piece;
        } else if (write_all(out, (const char *)s->dbuf + s->at, piece) != 0) {
            return -1;
        }
        s->at += piece;
        n -= piece;
    }
    return 0;
}

/* The next entry of the stream (kind, u32le mode, u16le path length, u64le data length,
 * path, data), written under dir. */
static int put_entry(struct stream *s, const char *dir)
{
    unsigned char ent[15];
    char rel[PATH_MAX], path[PATH_MAX * 2], target[PATH_MAX];
    if (take(s, ent, -1, sizeof ent) != 0)
        return -1;
    char kind = (char)ent[0];
    mode_t mode = (mode_t)le(ent + 1, 4) & 07777;
    size_t plen = (size_t)le(ent + 5, 2);
    uint64_t len = le(ent + 7, 8);
    if (plen == 0 || plen >= sizeof rel || take(s, (unsigned char *)rel, -1, plen) != 0)
        return -1;
    rel[plen] = '\0';
    if (!safe_relpath(rel) || snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path)
        return -1;
    if (kind == 'd')
        return len != 0 || (mkdir(path, mode | 0700) != 0 && errno != EEXIST) ? -1 : 0;
    if (kind == 'l') {
        if (len >= sizeof target || take(s, (unsigned char *)target, -1, len) != 0)
            return -1;
        target[len] = '\0';
        return symlink(target, path);
    }
    if (kind != 'f')
        return -1;
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
    if (out < 0)
        return -1;
    if (take(s, NULL, out, len) != 0) {
        close(out);
        return -1;
    }
    return fchmod(out, mode) != 0 || close(out) != 0 ? -1 : 0;
}

/* Unpack the tree at [offset, offset+size) of fd into dir (which exists, empty): JKTREE02,
 * u32le entries, u32le frames, a frame table (u64le compressed, u64le decompressed size
 * each), then the zstd frames of the entry stream (scripts/freeze/tree.py). */
static int unpack(int fd, uint64_t offset, uint64_t size, const char *dir)
{
    unsigned char head[16];
    struct stream s = {.fd = fd, .end = offset + size};
    if (size < 16 || read_at(fd, head, 16, offset) != 0 || memcmp(head, TREE_MAGIC, 8) != 0)
        return -1;
    uint64_t count = le(head + 8, 4);
    s.frames = le(head + 12, 4);
    s.pos = offset + 16 + 16 * s.frames;
    if (s.frames > 100000 || s.pos > s.end)
        return -1;
    unsigned char *table = malloc(16 * s.frames + 1);
    s.table = table;
    int rc = table && read_at(fd, table, 16 * s.frames, offset + 16) == 0 ? 0 : -1;
    for (uint64_t seen = 0; rc == 0 && seen < count; seen++)
        rc = put_entry(&s, dir);
    if (rc == 0 && (s.at != s.len || s.next != s.frames || s.pos != s.end))
        rc = -1;  /* bytes left over: a damaged table */
    free(table);
    free(s.cbuf);
    free(s.dbuf);
    return rc;
}

static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d != NULL) {
            struct dirent *e;
            char sub[PATH_MAX * 2];
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                    continue;
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                remove_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* Execute the installer from the unpacked tree at dir (returns only on failure). */
static void run_tree(const char *dir, int argc, char **argv)
{
    static char loader[PATH_MAX], libpath[PATH_MAX * 2], app[PATH_MAX], internal[PATH_MAX];
    static char ldpath[PATH_MAX * 3], nssfix[PATH_MAX];
    char **args = calloc((size_t)argc + 7, sizeof *args);

    if (args == NULL)
        return;
    snprintf(loader, sizeof loader, "%s/" LOADER, dir);
    snprintf(nssfix, sizeof nssfix, "%s/lib/libnssfix.so", dir);
    snprintf(app, sizeof app, "%s/app/bundle-install", dir);
    snprintf(internal, sizeof internal, "%s/app/_internal", dir);
    snprintf(libpath, sizeof libpath, "%s/lib:%s", dir, internal);
    const char *orig = getenv("LD_LIBRARY_PATH");
    if (orig != NULL && orig[0] != '\0') {
        setenv("LD_LIBRARY_PATH_ORIG", orig, 1);
        snprintf(ldpath, sizeof ldpath, "%s:%s", internal, orig);
    } else {
        snprintf(ldpath, sizeof ldpath, "%s", internal);
    }
    setenv("LD_LIBRARY_PATH", ldpath, 1);
    setenv("_PYI_ARCHIVE_FILE", app, 1);
    setenv("_PYI_PARENT_PROCESS_LEVEL", "-1", 1);
    setenv("_PYI_LINUX_PROCESS_NAME", "bundle-install", 1);
    unsetenv("_PYI_APPLICATION_HOME_DIR");
    unsetenv("PYINSTALLER_RESET_ENVIRONMENT");
    args[0] = loader;
    args[1] = "--preload";
    args[2] = nssfix;
    args[3] = "--library-path";
    args[4] = libpath;
    args[5] = app;
    for (int i = 1; i < argc; i++)
        args[5 + i] = argv[i];
    args[argc + 5] = NULL;
    execve(loader, args, environ);
    free(args);
}

/* The kept tree beside this binary, if it is this payload's: "<self>.d" (a symlink to
 * .trees/<id>) with .id naming it. Its real path goes to dir, and .id stays open with a
 * shared lock across the exec: installer/resident.py removes only trees nobody holds. */
static int kept_tree(const char *self, const unsigned char *id, char *dir, size_t n)
{
    char want[65], got[65], link[PATH_MAX + 8], idfile[PATH_MAX + 16];
    if (snprintf(link, sizeof link, "%s.d", self) >= (int)sizeof link)
        return 0;
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", id[i]);
    snprintf(idfile, sizeof idfile, "%s/.id", link);
    int fd = open(idfile, O_RDONLY);  /* no O_CLOEXEC: the lock lives as long as the installer */
    if (fd < 0)
        return 0;
    if (flock(fd, LOCK_SH | LOCK_NB) != 0 || read(fd, got, 64) != 64 || memcmp(got, want, 64) != 0 ||
        n < PATH_MAX || realpath(link, dir) == NULL) {
        close(fd);
        return 0;
    }
    return 1;
}

static void forward(int sig)
{
    if (child_pid > 0)
        kill(child_pid, sig);
}

int main(int argc, char **argv)
{
    static char self_path[PATH_MAX], self_dir[PATH_MAX], tree[PATH_MAX + 32], kept[PATH_MAX];
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
    if (end < TRAILER || read_at(self, trailer, TRAILER, (uint64_t)(end - TRAILER)) != 0)
        die("cannot read the payload trailer");
    if (memcmp(trailer, MAGIC, 8) != 0) {
        errno = EINVAL;
        die("no payload appended (a bare launcher)");
    }
    uint64_t offset = le(trailer + 8, 8), size = le(trailer + 16, 8);
    if (offset + size + TRAILER != (uint64_t)end) {
        errno = EINVAL;
        die("payload trailer does not match the file size (truncated download?)");
    }

    len = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    self_path[len > 0 ? len : 0] = '\0';
    if (len > 0 && kept_tree(self_path, trailer + 24, kept, sizeof kept)) {
        close(self);
        run_tree(kept, argc, argv);  /* returns only when it could not execute: unpack */
        self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        if (self < 0)
            die("cannot open /proc/self/exe (is /proc mounted?)");
    }

    snprintf(self_dir, sizeof self_dir, "%s", self_path);
    char *slash = strrchr(self_dir, '/');
    if (slash != NULL && slash != self_dir)
        *slash = '\0';
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

    snprintf(tree, sizeof tree, "%s/.bundle-install-XXXXXX", chosen);
    if (mkdtemp(tree) == NULL)
        die("cannot create a directory in the temporary directory");
    if (unpack(self, offset, size, tree) != 0) {
        int saved = errno ? errno : EINVAL;
        remove_tree(tree);
        errno = saved;
        die("cannot unpack the installer (disk full, or a damaged file?)");
    }
    close(self);

    /* The catchable signals go to the installer; the launcher only waits and cleans up. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH};
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaddset(&block, forwarded[i]);
    sigprocmask(SIG_BLOCK, &block, &old);  /* no signal lost between fork and child_pid */
    /* the process the operator started is this one: the installer names it (its lock, its
       messages) rather than its own pid (installer/state.py: operator_pid) */
    char self_pid[24];
    snprintf(self_pid, sizeof self_pid, "%ld", (long)getpid());
    setenv("JUMPKIT_LAUNCHER_PID", self_pid, 1);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);
    child_pid = fork();
    if (child_pid < 0) {
        remove_tree(tree);
        die("cannot fork");
    }
    if (child_pid == 0) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
            sigaction(forwarded[i], &dfl, NULL);
        sigprocmask(SIG_SETMASK, &old, NULL);
        run_tree(tree, argc, argv);
        fprintf(stderr, "bundle-install: cannot start: cannot execute %s/" LOADER ": %s\n", tree,
                strerror(errno));
        _exit(EXIT_PRECONDITION);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    int status = 0;
    while (waitpid(child_pid, &status, 0) < 0 && errno == EINTR) {
    }
    remove_tree(tree);
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
        return 128 + sig;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
