/* TCP connection and process lifecycle capture, on tracepoints only.
 *
 * This kernel family may lack kprobes and fentry; tracepoints are stable ABI and their
 * `args->` fields come from the running kernel's format files. Struct reads that tracepoints
 * do not provide (netns, the accept fd walk, byte counters) use offsets read from BTF at
 * start-up and passed in as OFF_* macros: installed headers may belong to another kernel.
 *
 * Attribution (measured on 6.x):
 *  - active open: CLOSE -> SYN_SENT runs inside connect(), so the current task is the
 *    connecting process; remember it per socket until ESTABLISHED or CLOSE.
 *  - passive open: SYN_RECV -> ESTABLISHED runs in softirq or in the client's context, so the
 *    current task is wrong there. The socket is remembered and attributed when accept()
 *    returns it (task -> files -> fdtable -> file -> socket -> sk).
 *  - later transitions run in any context: take the owner from the per-socket entry and the
 *    netns from the socket, never from the current task.
 *
 * Events are staged per CPU and handed to user space STAGE_MAX at a time (or when older than
 * STAGE_MAX_AGE_NS), which cuts the consumer's per-event cost by an order of magnitude. A CPU
 * that goes quiet would keep its stage forever, so the recorder runs one thread pinned to each
 * CPU that calls getppid() periodically: the tick program below flushes that CPU's stage.
 * (A perf cpu-clock event was tried first: it does not fire on an idle CPU.) Every event
 * that cannot be handed over is counted.
 */
#include "tcp_events.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define PROTO_TCP 6
#define FAMILY_INET 2
#define FAMILY_INET6 10

#define ROLE_ACTIVE 1
#define ROLE_PASSIVE 2

/* stats slots (per CPU) */
#define ST_LOST_EVENTS 0       /* events in records the ring buffer refused */
#define ST_LOST_RECORDS 1
#define ST_LOST_LAST_TS 2
#define ST_SOCK_TABLE_FULL 3   /* sockets we could not remember: events unattributed */
#define ST_EVENTS 4            /* events staged */
#define ST_STALE_SOCKETS 5     /* entries of sockets whose close the programs never saw */
#define ST_SLOTS 6

struct sock_info {
    u64 sock_id;
    u64 open_ts_ns;
    u32 pid;
    u8 role;
    u8 accepted;
    u8 family;
    u8 pad;
    u16 lport;
    u16 rport;
    char comm[16];
    u8 laddr[16];
    u8 raddr[16];
};

struct stage {
    struct stage_header hdr;
    struct event ev[STAGE_MAX];
    u32 records_since_wakeup;  /* not handed over: only hdr and ev[] are */
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_HASH(socks, u64, struct sock_info, SOCK_TABLE_SIZE);
BPF_PERCPU_ARRAY(stages, struct stage, 1);
BPF_PERCPU_ARRAY(stats, u64, ST_SLOTS);
BPF_ARRAY(next_sock_id, u64, 1);
BPF_ARRAY(control, u64, 1);   /* [0] = 1: flush every stage on the next tick (shutdown) */

static __always_inline void stat_add(u32 slot, u64 value)
{
    u64 *counter = stats.lookup(&slot);
    if (counter)
        *counter += value;
}

static __always_inline void stat_set(u32 slot, u64 value)
{
    u64 *counter = stats.lookup(&slot);
    if (counter)
        *counter = value;
}

static __always_inline u64 new_sock_id(void)
{
    u32 zero = 0;
    u64 *next = next_sock_id.lookup(&zero);
    if (!next)
        return 0;
    return __sync_fetch_and_add(next, 1) + 1;
}

static __always_inline u32 sock_netns(const void *sk)
{
    void *net = NULL;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + OFF_SOCK_NET);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + OFF_NET_INUM);
    return inum;
}

static __always_inline u32 task_netns(const void *task)
{
    void *nsproxy = NULL, *net = NULL;
    u32 inum = 0;
    bpf_probe_read_kernel(&nsproxy, sizeof(nsproxy), (const char *)task + OFF_TASK_NSPROXY);
    if (!nsproxy)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)nsproxy + OFF_NSPROXY_NET_NS);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + OFF_NET_INUM);
    return inum;
}

static __always_inline u32 task_ppid(const void *task)
{
    void *parent = NULL;
    u32 tgid = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent), (const char *)task + OFF_TASK_REAL_PARENT);
    if (parent)
        bpf_probe_read_kernel(&tgid, sizeof(tgid), (const char *)parent + OFF_TASK_TGID);
    return tgid;
}

/* Hand the current CPU's staged events to user space. A refused record is counted, never
 * silently dropped. */
static __always_inline void stage_flush(struct stage *s, u64 now)
{
    u32 count = s->hdr.count;
    if (count == 0)
        return;
    if (count > STAGE_MAX)
        count = STAGE_MAX;
    u64 size = sizeof(struct stage_header) + (u64)count * sizeof(struct event);
    if (size > sizeof(struct stage))
        size = sizeof(struct stage);
    s->hdr.cpu = bpf_get_smp_processor_id();
    /* Wake the consumer once every WAKEUP_EVERY_RECORDS records of this CPU, not for each:
     * a wake-up runs in the workload's own context and cost more than the record under
     * load. The recorder drains at least every poll timeout without waiting for one. */
    u64 flags = BPF_RB_NO_WAKEUP;
    if (++s->records_since_wakeup >= WAKEUP_EVERY_RECORDS) {
        flags = BPF_RB_FORCE_WAKEUP;
        s->records_since_wakeup = 0;
    }
    if (events.ringbuf_output(s, size, flags) != 0) {
        stat_add(ST_LOST_EVENTS, count);
        stat_add(ST_LOST_RECORDS, 1);
        stat_set(ST_LOST_LAST_TS, now);
    }
    s->hdr.count = 0;
}

/* A free slot in this CPU's stage, zeroed, with its timestamp set; NULL if unavailable. */
static __always_inline struct event *stage_slot(struct stage **out, u64 now)
{
    u32 zero = 0;
    struct stage *s = stages.lookup(&zero);
    if (!s)
        return NULL;
    if (s->hdr.count >= STAGE_MAX)
        stage_flush(s, now);
    u32 index = s->hdr.count;
    if (index >= STAGE_MAX)
        return NULL;
    if (index == 0)
        s->hdr.first_ts_ns = now;
    struct event *e = &s->ev[index];
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = now;
    *out = s;
    return e;
}

static __always_inline void stage_commit(struct stage *s, u64 now)
{
    s->hdr.count += 1;
    stat_add(ST_EVENTS, 1);
    if (s->hdr.count >= STAGE_MAX || now - s->hdr.first_ts_ns >= STAGE_MAX_AGE_NS)
        stage_flush(s, now);
}

static __always_inline void copy_addrs(u8 *dst_l, u8 *dst_r, u16 family,
                                       const u8 *saddr, const u8 *daddr,
                                       const u8 *saddr_v6, const u8 *daddr_v6)
{
    if (family == FAMILY_INET) {
        __builtin_memcpy(dst_l, saddr, 4);
        __builtin_memcpy(dst_r, daddr, 4);
    } else {
        __builtin_memcpy(dst_l, saddr_v6, 16);
        __builtin_memcpy(dst_r, daddr_v6, 16);
    }
}

/* The tracepoint's tuple: sport/saddr are the local side for the socket changing state. */
#define FILL_TUPLE(info, args, family)                                                    \
    do {                                                                                  \
        (info)->family = (family);                                                        \
        (info)->lport = (args)->sport;                                                    \
        (info)->rport = (args)->dport;                                                    \
        copy_addrs((info)->laddr, (info)->raddr, (family), (args)->saddr, (args)->daddr,  \
                   (args)->saddr_v6, (args)->daddr_v6);                                   \
    } while (0)

static __always_inline void emit_from_info(u8 kind, u64 now, const void *sk, u64 ts,
                                           struct sock_info *info, u16 flags)
{
    struct stage *s = NULL;
    struct event *e = stage_slot(&s, now);
    if (!e || !s)
        return;
    e->ts_ns = ts;
    e->kind = kind;
    e->sock_id = info->sock_id;
    e->pid = info->pid;
    e->netns = sock_netns(sk);
    e->family = info->family;
    e->lport = info->lport;
    e->rport = info->rport;
    e->flags = flags | (info->role == ROLE_PASSIVE ? EVF_PASSIVE : 0);
    __builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
    __builtin_memcpy(e->laddr, info->laddr, 16);
    __builtin_memcpy(e->raddr, info->raddr, 16);
    if (kind == EV_CLOSE) {
        bpf_probe_read_kernel(&e->bytes_sent, sizeof(u64), (const char *)sk + OFF_TCP_BYTES_ACKED);
        bpf_probe_read_kernel(&e->bytes_received, sizeof(u64),
                              (const char *)sk + OFF_TCP_BYTES_RECEIVED);
    } else if (kind == EV_CONNECT_FAILED) {
        int err = 0;
        bpf_probe_read_kernel(&err, sizeof(err), (const char *)sk + OFF_SOCK_ERR);
        e->aux = err;
    }
    stage_commit(s, now);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    u16 family = args->family;
    if (family != FAMILY_INET && family != FAMILY_INET6)
        return 0;
    u64 sk_key = (u64)args->skaddr;
    const void *sk = args->skaddr;
    int oldstate = args->oldstate;
    int newstate = args->newstate;
    u64 now = bpf_ktime_get_ns();

    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
        /* Inside connect(): the current task is the connecting process. */
        struct sock_info info = {};
        info.sock_id = new_sock_id();
        info.pid = bpf_get_current_pid_tgid() >> 32;
        info.role = ROLE_ACTIVE;
        bpf_get_current_comm(&info.comm, sizeof(info.comm));
        if (socks.update(&sk_key, &info) != 0)
            stat_add(ST_SOCK_TABLE_FULL, 1);
        return 0;
    }

    if (newstate == TCP_ESTABLISHED &&
        (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)) {
        struct sock_info *info = socks.lookup(&sk_key);
        /* An entry is this socket's only if its connect() made it (active, not yet open).
         * One already open, or passive, is left from an earlier socket at the same address
         * whose close never reached us (the kernel skipped the program): using it would give
         * this socket that one's id, pid and accepted flag, so its accept would go unseen. */
        if (info && (info->role != ROLE_ACTIVE || info->open_ts_ns)) {
            stat_add(ST_STALE_SOCKETS, 1);
            info = NULL;
        }
        if (info) {
            /* Its own connect(): an active open, also when both ends connected at once
             * (SYN_SENT -> SYN_RECV -> ESTABLISHED, as a socket connecting to itself does). */
            info->open_ts_ns = now;
            FILL_TUPLE(info, args, family);
            emit_from_info(EV_CONNECT, now, sk, now, info, 0);
            return 0;
        }
        /* Not seen before: a passive open (the usual case), or an active one whose
         * SYN_SENT we missed (started earlier, or the table was full). */
        struct sock_info fresh = {};
        fresh.sock_id = new_sock_id();
        fresh.role = oldstate == TCP_SYN_SENT ? ROLE_ACTIVE : ROLE_PASSIVE;
        fresh.open_ts_ns = now;
        FILL_TUPLE(&fresh, args, family);
        if (socks.update(&sk_key, &fresh) != 0)
            stat_add(ST_SOCK_TABLE_FULL, 1);
        if (oldstate == TCP_SYN_SENT)
            emit_from_info(EV_CONNECT, now, sk, now, &fresh, EVF_UNATTRIBUTED);
        /* Passive opens are emitted when accept() returns the socket. */
        return 0;
    }

    if (newstate != TCP_CLOSE)
        return 0;

    struct sock_info *info = socks.lookup(&sk_key);
    if (oldstate == TCP_SYN_SENT) {
        if (info) {
            FILL_TUPLE(info, args, family);
            emit_from_info(EV_CONNECT_FAILED, now, sk, now, info, 0);
            socks.delete(&sk_key);
        }
        return 0;
    }
    if (oldstate == TCP_LISTEN || oldstate == TCP_SYN_RECV)
        return 0;

    if (info) {
        if (info->role == ROLE_PASSIVE && !info->accepted)
            /* Never returned by accept(): the connection still happened. */
            emit_from_info(EV_ACCEPT, now, sk, info->open_ts_ns, info, EVF_UNATTRIBUTED);
        emit_from_info(EV_CLOSE, now, sk, now, info, info->pid ? 0 : EVF_UNATTRIBUTED);
        socks.delete(&sk_key);
        return 0;
    }

    /* Opened before the recording started: close it with what the tracepoint says. */
    struct sock_info unknown = {};
    FILL_TUPLE(&unknown, args, family);
    emit_from_info(EV_CLOSE, now, sk, now, &unknown, EVF_UNATTRIBUTED);
    return 0;
}

/* The socket behind file descriptor `fd` of the current task. */
static __always_inline u64 fd_to_sock(int fd)
{
    const char *task = (const char *)bpf_get_current_task();
    void *files = NULL, *fdt = NULL, **fd_array = NULL, *file = NULL, *socket = NULL;
    void *sk = NULL;
    unsigned int max_fds = 0;
    bpf_probe_read_kernel(&files, sizeof(files), task + OFF_TASK_FILES);
    if (!files)
        return 0;
    bpf_probe_read_kernel(&fdt, sizeof(fdt), (char *)files + OFF_FILES_FDT);
    if (!fdt)
        return 0;
    bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (char *)fdt + OFF_FDTABLE_MAX_FDS);
    if ((unsigned int)fd >= max_fds)
        return 0;
    bpf_probe_read_kernel(&fd_array, sizeof(fd_array), (char *)fdt + OFF_FDTABLE_FD);
    if (!fd_array)
        return 0;
    bpf_probe_read_kernel(&file, sizeof(file), &fd_array[fd]);
    if (!file)
        return 0;
    bpf_probe_read_kernel(&socket, sizeof(socket), (char *)file + OFF_FILE_PRIVATE_DATA);
    if (!socket)
        return 0;
    bpf_probe_read_kernel(&sk, sizeof(sk), (char *)socket + OFF_SOCKET_SK);
    return (u64)sk;
}

static __always_inline int on_accept_return(long ret)
{
    if (ret < 0)
        return 0;
    u64 sk_key = fd_to_sock((int)ret);
    if (!sk_key)
        return 0;
    struct sock_info *info = socks.lookup(&sk_key);
    if (!info || info->role != ROLE_PASSIVE || info->accepted)
        return 0;
    info->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&info->comm, sizeof(info->comm));
    info->accepted = 1;
    emit_from_info(EV_ACCEPT, bpf_ktime_get_ns(), (const void *)sk_key, info->open_ts_ns, info, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    return on_accept_return(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    return on_accept_return(args->ret);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 now = bpf_ktime_get_ns();
    struct stage *s = NULL;
    struct event *e = stage_slot(&s, now);
    if (!e || !s)
        return 0;
    const void *task = (const void *)bpf_get_current_task();
    e->kind = EV_EXEC;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->aux = task_ppid(task);
    e->netns = task_netns(task);
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    unsigned short len = args->data_loc_filename >> 16;
    if (len > sizeof(e->filename))
        e->flags |= EVF_TRUNCATED;
    bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (const char *)args + loc);
    stage_commit(s, now);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    if (!args->group_dead)
        return 0;  /* a thread ended, not the process */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    struct stage *s = NULL;
    struct event *e = stage_slot(&s, now);
    if (!e || !s)
        return 0;
    const void *task = (const void *)bpf_get_current_task();
    e->kind = EV_EXIT;
    e->pid = pid_tgid >> 32;
    e->aux = task_ppid(task);
    e->netns = task_netns(task);
    int exit_code = 0;
    bpf_probe_read_kernel(&exit_code, sizeof(exit_code), (const char *)task + OFF_TASK_EXIT_CODE);
    e->aux2 = exit_code;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    stage_commit(s, now);
    return 0;
}

/* The recorder's pinned tick threads call getppid() on every CPU: hand over events that have
 * waited long enough, or all of them when user space asks (shutdown). */
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    if ((bpf_get_current_pid_tgid() >> 32) != RECORDER_TGID)
        return 0;
    u32 zero = 0;
    struct stage *s = stages.lookup(&zero);
    if (!s || s->hdr.count == 0)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 *flush_all = control.lookup(&zero);
    if ((flush_all && *flush_all) || now - s->hdr.first_ts_ns >= STAGE_MAX_AGE_NS)
        stage_flush(s, now);
    return 0;
}
