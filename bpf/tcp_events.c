/* TCP connection and process lifecycle capture, on tracepoints only.
 *
 * This kernel family may lack kprobes and fentry; tracepoints are stable ABI. Struct reads
 * (the socket's addresses and namespace, the accept fd walk, byte counters) use offsets read
 * from BTF at start-up and passed in as OFF_* macros: installed headers may belong to another
 * kernel.
 *
 * Socket state changes come from the raw tracepoint of sock:inet_sock_set_state (sk, old
 * state, new state). The classic tracepoint would copy the whole tuple into a trace record
 * before every run, ten times per connection, where only the few transitions that open or
 * close a connection need it: here those read it from the socket themselves. Most runs are
 * two comparisons.
 *
 * Attribution (measured on 6.x):
 *  - active open: CLOSE -> SYN_SENT runs inside connect(), so the current task is the
 *    connecting process; remember it per socket until ESTABLISHED or CLOSE.
 *  - passive open: SYN_RECV -> ESTABLISHED runs in softirq or in the client's context, so the
 *    current task is wrong there. The socket is remembered and attributed when accept()
 *    returns it (task -> files -> fdtable -> file -> socket -> sk).
 *  - later transitions run in any context: take the owner and the netns from the per-socket
 *    entry, never from the current task.
 *  - except two that only close() and shutdown() cause, in the context of the process that
 *    dropped the socket's last reference: ESTABLISHED -> FIN_WAIT1 and CLOSE_WAIT -> LAST_ACK.
 *    Pre-fork servers accept in one process and serve in another (a forked child, or a
 *    worker the socket was passed to over a unix socket), so when that process is not the
 *    recorded owner, or is but forked meanwhile, the programs say so (EV_OWNER). With the
 *    forks (EV_FORK), replay can say who held a socket at any moment.
 *
 * Events are staged per CPU and handed to user space STAGE_MAX at a time (or when older than
 * STAGE_MAX_AGE_NS), which cuts the consumer's per-event cost by an order of magnitude. A CPU
 * that goes quiet would keep its stage forever, so the recorder runs flush_stage (below) on
 * every CPU periodically. (A perf cpu-clock event does not fire on an idle CPU; threads
 * pinned to each CPU calling a traced syscall worked, at two context switches a tick.)
 *
 * The raw tracepoint program can interrupt the others on their CPU (a softirq arriving while
 * accept()'s program writes to the stage), and flush_stage runs from an interrupt: the kernel
 * only keeps a program from nesting in itself. So a program holds its CPU's stage while it
 * writes to it, and a run that finds the stage held writes its event to the ring buffer as a
 * record of its own. Every event that cannot be handed over is counted.
 */
#include "tcp_events.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10
#define PROTO_TCP 6
#define FAMILY_INET 2
#define FAMILY_INET6 10
#define ERR_EXIST 17

#define PF_KTHREAD 0x00200000  /* task_struct.flags: a kernel thread */

/* Follow sockets from process to process: forks (EV_FORK) and closes made by a process
 * other than a socket's recorded owner (EV_OWNER). 0: neither is recorded. */
#ifndef FOLLOW_FORKS
#define FOLLOW_FORKS 1
#endif
#ifndef FORKED_TABLE_SIZE
#define FORKED_TABLE_SIZE 65536
#endif

#define ROLE_ACTIVE 1
#define ROLE_PASSIVE 2

/* stats slots (per CPU) */
#define ST_LOST_EVENTS 0       /* events the ring buffer refused */
#define ST_LOST_RECORDS 1
#define ST_LOST_LAST_TS 2
#define ST_SOCK_TABLE_FULL 3   /* sockets we could not remember: events unattributed */
#define ST_EVENTS 4            /* events staged or written directly */
#define ST_STALE_SOCKETS 5     /* entries of sockets whose close the programs never saw */
#define ST_SLOTS 6

struct sock_info {
    u64 sock_id;
    u64 open_ts_ns;
    u32 pid;
    u32 netns;
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
    u32 held;                  /* a program is writing to this stage */
};

/* An event that could not be staged, handed over as a record of one. */
struct lone_record {
    struct stage_header hdr;
    struct event ev;
};

/* How many EV_ARGS pieces follow an EXEC at most (0: command lines are not read). */
#ifndef EXEC_ARGS_PIECES
#define EXEC_ARGS_PIECES 4
#endif

/* An EXEC and its command line's pieces that could not be staged, as a record of their own
 * (hdr.count says how many of them are used). */
struct lone_exec_record {
    struct stage_header hdr;
    struct event ev[1 + EXEC_ARGS_PIECES];
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_HASH(socks, u64, struct sock_info, SOCK_TABLE_SIZE);
BPF_PERCPU_ARRAY(stages, struct stage, 1);
BPF_PERCPU_ARRAY(stats, u64, ST_SLOTS);
BPF_ARRAY(next_sock_id, u64, 1);
/* When each process last forked (FOLLOW_FORKS): a socket closed by its opener, a process
 * that forks, is reported closed (EV_OWNER): its children may have held it too. LRU: an
 * entry pushed out only costs that report. */
BPF_TABLE("lru_hash", u32, u64, forked_at, FORKED_TABLE_SIZE);
/* [CTL_FLUSH_ALL] = 1: flush_stage hands over every event (shutdown). The other slots are
 * user space's alone: programs pinned in bpffs outlive a recorder, and each recorder leaves
 * there what the next one needs to carry on (see recorder/capture.py). */
#define CTL_FLUSH_ALL 0
#define CTL_SLOTS 16
BPF_ARRAY(control, u64, CTL_SLOTS);

/* NETNS_FILTER 1: only the network namespaces whose inodes user space put in netns_wanted
 * are recorded (scope-record --netns); the rest is dropped before it takes any room. */
#ifndef NETNS_FILTER
#define NETNS_FILTER 0
#endif
#define NETNS_WANTED_MAX 1024
BPF_HASH(netns_wanted, u32, u64, NETNS_WANTED_MAX);

#define compiler_barrier() asm volatile("" ::: "memory")

/* Atomic: a nested run on the same CPU may add to the same counter. */
static __always_inline void stat_add(u32 slot, u64 value)
{
    u64 *counter = stats.lookup(&slot);
    if (counter)
        __sync_fetch_and_add(counter, value);
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

static __always_inline u32 net_inum(const void *net)
{
    u32 inum = 0;
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + OFF_NET_INUM);
    return inum;
}

static __always_inline u32 task_netns(const void *task)
{
    void *nsproxy = NULL, *net = NULL;
    bpf_probe_read_kernel(&nsproxy, sizeof(nsproxy), (const char *)task + OFF_TASK_NSPROXY);
    if (!nsproxy)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)nsproxy + OFF_NSPROXY_NET_NS);
    return net_inum(net);
}

/* Whether what happens in network namespace ``inum`` is recorded. */
static __always_inline int netns_kept(u32 inum)
{
#if NETNS_FILTER
    return netns_wanted.lookup(&inum) != NULL;
#else
    return 1;
#endif
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

static __always_inline int sock_is_tcp(const void *sk)
{
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), (const char *)sk + OFF_SOCK_PROTOCOL);
    return protocol == PROTO_TCP;
}

/* Members that lie close together are read in one go: a span of a struct, from
 * <GROUP>_SPAN_START (8-byte aligned) for <GROUP>_SPAN_BYTES, covering every member of the
 * group (recorder/capture.py works the spans out from BTF). */
#define SPAN_WORDS(group) ((group##_SPAN_BYTES + 7) / 8)
#define SPAN_READ(buf, base, group) \
    bpf_probe_read_kernel((buf), sizeof(buf), (const char *)(base) + group##_SPAN_START)
#define SPAN_AT(buf, group, member) ((u8 *)(buf) + OFF_##member - group##_SPAN_START)
#define SPAN_GET(buf, group, member, type) (*(type *)SPAN_AT(buf, group, member))

/* The socket's family, ports, addresses and network namespace, into `info`, mostly from one
 * read of struct sock_common. Ports as the inet_sock_set_state tracepoint gives them (host
 * order); addresses as the socket keeps them (network order), as /proc/net/tcp{,6} lists
 * them. The local port is inet_sport, as the tracepoint's: sock_common's skc_num is already
 * 0 when the transition to CLOSE runs for a socket whose port the kernel chose.
 * 0 if the family is not IP. */
static __always_inline int read_tuple(const void *sk, struct sock_info *info)
{
    u64 common[SPAN_WORDS(SKC)];
    u16 sport = 0;
    SPAN_READ(common, sk, SKC);
    u16 family = SPAN_GET(common, SKC, SKC_FAMILY, u16);
    if (family != FAMILY_INET && family != FAMILY_INET6)
        return 0;
    bpf_probe_read_kernel(&sport, sizeof(sport), (const char *)sk + OFF_INET_SPORT);
    info->family = family;
    info->lport = __builtin_bswap16(sport);
    info->rport = __builtin_bswap16(SPAN_GET(common, SKC, SKC_DPORT, u16));
    if (family == FAMILY_INET) {
        __builtin_memcpy(info->laddr, SPAN_AT(common, SKC, SKC_RCV_SADDR), 4);
        __builtin_memcpy(info->raddr, SPAN_AT(common, SKC, SKC_DADDR), 4);
    } else {
        __builtin_memcpy(info->laddr, SPAN_AT(common, SKC, SKC_V6_RCV_SADDR), 16);
        __builtin_memcpy(info->raddr, SPAN_AT(common, SKC, SKC_V6_DADDR), 16);
    }
    info->netns = net_inum(SPAN_GET(common, SKC, SOCK_NET, void *));
    return 1;
}

/* -- handing events over --------------------------------------------------------------- */

/* Events the ring buffer refused (one record's): counted, never silently dropped. */
static __always_inline void count_lost(u64 events_lost, u64 now)
{
    stat_add(ST_LOST_EVENTS, events_lost);
    stat_add(ST_LOST_RECORDS, 1);
    stat_set(ST_LOST_LAST_TS, now);
}

/* Hand the stage's events to user space. A refused record is counted, never silently
 * dropped. Called with the stage held. */
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
    if (events.ringbuf_output(s, size, flags) != 0)
        count_lost(count, now);
    s->hdr.count = 0;
}

/* This CPU's stage, held, or NULL when another run on this CPU holds it (this one
 * interrupted it). Runs on one CPU only nest, never interleave, so plain stores suffice; the
 * barriers keep the compiler from moving stage writes outside the hold. */
static __always_inline struct stage *stage_hold(void)
{
    u32 zero = 0;
    struct stage *s = stages.lookup(&zero);
    if (!s || s->held || !STAGING)
        return NULL;
    s->held = 1;
    compiler_barrier();
    return s;
}

static __always_inline void stage_release(struct stage *s)
{
    compiler_barrier();
    s->held = 0;
}

/* The next free slot of a held stage, zeroed and stamped. */
static __always_inline struct event *stage_slot(struct stage *s, u64 now)
{
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
    return e;
}

/* The slot stage_slot gave, taken; handed over only by stage_commit (or a later flush). */
static __always_inline void stage_add(struct stage *s)
{
    s->hdr.count += 1;
    stat_add(ST_EVENTS, 1);
}

/* Handed over when the stage is full or its first event has waited long enough. */
static __always_inline void stage_due(struct stage *s, u64 now)
{
    if (s->hdr.count >= STAGE_MAX || now - s->hdr.first_ts_ns >= STAGE_MAX_AGE_NS)
        stage_flush(s, now);
}

static __always_inline void stage_commit(struct stage *s, u64 now)
{
    stage_add(s);
    stage_due(s, now);
}

/* A record of one event, reserved in the ring buffer, for a run that found the stage held;
 * NULL (and counted) if the ring buffer is full. */
static __always_inline struct lone_record *lone_reserve(u64 now)
{
    stat_add(ST_EVENTS, 1);  /* made, whether or not the ring buffer takes it */
    struct lone_record *r = events.ringbuf_reserve(sizeof(struct lone_record));
    if (!r) {
        count_lost(1, now);
        return NULL;
    }
    __builtin_memset(r, 0, sizeof(*r));
    r->hdr.count = 1;
    r->hdr.cpu = bpf_get_smp_processor_id();
    r->hdr.first_ts_ns = now;
    r->ev.ts_ns = now;
    return r;
}

static __always_inline void lone_submit(struct lone_record *r)
{
    events.ringbuf_submit(r, 0);
}

/* EMIT(now, e, ...): run the statements with `e` pointing at a fresh, zeroed event stamped
 * `now`, in this CPU's stage or, when the stage is held, in a record of its own. */
#define EMIT(now, e, ...)                                                                  \
    do {                                                                                   \
        struct stage *emit_stage_ = stage_hold();                                          \
        if (emit_stage_) {                                                                 \
            struct event *e = stage_slot(emit_stage_, (now));                              \
            if (e) {                                                                       \
                __VA_ARGS__;                                                               \
                stage_commit(emit_stage_, (now));                                          \
            }                                                                              \
            stage_release(emit_stage_);                                                    \
        } else {                                                                           \
            struct lone_record *emit_lone_ = lone_reserve(now);                            \
            if (emit_lone_) {                                                              \
                struct event *e = &emit_lone_->ev;                                         \
                __VA_ARGS__;                                                               \
                lone_submit(emit_lone_);                                                   \
            }                                                                              \
        }                                                                                  \
    } while (0)

/* -- sockets ---------------------------------------------------------------------------- */

static __always_inline void fill_from_info(struct event *e, u8 kind, const void *sk, u64 ts,
                                           const struct sock_info *info, u16 flags)
{
    e->ts_ns = ts;
    e->kind = kind;
    e->sock_id = info->sock_id;
    e->pid = info->pid;
    e->netns = info->netns;
    e->family = info->family;
    e->lport = info->lport;
    e->rport = info->rport;
    e->flags = flags | (info->role == ROLE_PASSIVE ? EVF_PASSIVE : 0);
    __builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
    __builtin_memcpy(e->laddr, info->laddr, 16);
    __builtin_memcpy(e->raddr, info->raddr, 16);
    if (kind == EV_CLOSE) {
#if TCP_BYTES_SPAN_BYTES
        u64 counters[SPAN_WORDS(TCP_BYTES)];
        SPAN_READ(counters, sk, TCP_BYTES);
        e->bytes_sent = SPAN_GET(counters, TCP_BYTES, TCP_BYTES_ACKED, u64);
        e->bytes_received = SPAN_GET(counters, TCP_BYTES, TCP_BYTES_RECEIVED, u64);
#else  /* too far apart in this kernel to read at once */
        bpf_probe_read_kernel(&e->bytes_sent, 8, (const char *)sk + OFF_TCP_BYTES_ACKED);
        bpf_probe_read_kernel(&e->bytes_received, 8, (const char *)sk + OFF_TCP_BYTES_RECEIVED);
#endif
    } else if (kind == EV_CONNECT_FAILED) {
        int err = 0;
        bpf_probe_read_kernel(&err, sizeof(err), (const char *)sk + OFF_SOCK_ERR);
        e->aux = err;
    }
}

static __always_inline void emit_from_info(u8 kind, const void *sk, u64 now, u64 ts,
                                           const struct sock_info *info, u16 flags)
{
    EMIT(now, e, fill_from_info(e, kind, sk, ts, info, flags));
}

/* CLOSE -> SYN_SENT, inside connect(): the current task is the connecting process. */
static __always_inline void on_connect_start(const void *sk, u64 sk_key)
{
    if (!sock_is_tcp(sk))
        return;
#if NETNS_FILTER
    const void *net = NULL;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + OFF_SOCK_NET);
    if (!netns_kept(net_inum(net)))
        return;  /* never remembered: its later transitions find no entry */
#endif
    struct sock_info info = {};
    info.sock_id = new_sock_id();
    info.pid = bpf_get_current_pid_tgid() >> 32;
    info.role = ROLE_ACTIVE;
    bpf_get_current_comm(&info.comm, sizeof(info.comm));
    if (socks.update(&sk_key, &info) != 0)
        stat_add(ST_SOCK_TABLE_FULL, 1);
}

/* An entry its connect() made, of a socket that has not reached ESTABLISHED. */
static __always_inline int connect_pending(const struct sock_info *info)
{
    return info->role == ROLE_ACTIVE && !info->open_ts_ns;
}

/* An entry is this socket's own only if its connect() made it (active, not yet open). One
 * already open, or passive, is left from an earlier socket at the same address whose close
 * never reached us (the kernel skipped the program): using it would give this socket that
 * one's id, pid and accepted flag, so its accept would go unseen. Such entries are counted. */
static __always_inline struct sock_info *own_connect(struct sock_info *info)
{
    if (info && !connect_pending(info)) {
        stat_add(ST_STALE_SOCKETS, 1);
        return NULL;
    }
    return info;
}

/* Its own connect() reached ESTABLISHED: an active open, also when both ends connected at
 * once (SYN_SENT -> SYN_RECV -> ESTABLISHED, as a socket connecting to itself does). */
static __always_inline void active_open(const void *sk, struct sock_info *info, u64 now)
{
    if (!read_tuple(sk, info))
        return;
    info->open_ts_ns = now;
    emit_from_info(EV_CONNECT, sk, now, now, info, 0);
}

static __always_inline void on_established(const void *sk, u64 sk_key, int oldstate)
{
    u64 now = bpf_ktime_get_ns();
    if (oldstate == TCP_SYN_SENT) {
        struct sock_info *info = own_connect(socks.lookup(&sk_key));
        if (info) {
            active_open(sk, info, now);
            return;
        }
    }
    if (!sock_is_tcp(sk))
        return;
    /* A passive open (the usual case), or an active one whose SYN_SENT we missed (started
     * earlier, or the table was full). */
    struct sock_info fresh = {};
    if (!read_tuple(sk, &fresh) || !netns_kept(fresh.netns))
        return;
    fresh.sock_id = new_sock_id();
    fresh.role = oldstate == TCP_SYN_SENT ? ROLE_ACTIVE : ROLE_PASSIVE;
    fresh.open_ts_ns = now;
    if (oldstate == TCP_SYN_RECV) {
        int err = socks.insert(&sk_key, &fresh);
        if (err == 0)
            return;  /* passive opens are emitted when accept() returns the socket */
        if (err == -ERR_EXIST) {
            struct sock_info *info = own_connect(socks.lookup(&sk_key));
            if (info) {
                active_open(sk, info, now);
                return;
            }
        }
    }
    if (socks.update(&sk_key, &fresh) != 0)
        stat_add(ST_SOCK_TABLE_FULL, 1);
    if (oldstate == TCP_SYN_SENT)
        emit_from_info(EV_CONNECT, sk, now, now, &fresh, EVF_UNATTRIBUTED);
}

static __always_inline void on_close(const void *sk, u64 sk_key, int oldstate)
{
    if (oldstate == TCP_LISTEN)
        return;
    struct sock_info *info = socks.lookup(&sk_key);
    if (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV) {
        /* A connect() that never reached ESTABLISHED failed (a passive socket that dies in
         * SYN_RECV was never remembered: nothing happened). */
        if (info && connect_pending(info) && read_tuple(sk, info)) {
            u64 now = bpf_ktime_get_ns();
            emit_from_info(EV_CONNECT_FAILED, sk, now, now, info, 0);
            socks.delete(&sk_key);
        }
        return;
    }
    u64 now = bpf_ktime_get_ns();
    if (info) {
        if (!info->open_ts_ns)
            read_tuple(sk, info);  /* an active open whose ESTABLISHED the programs missed */
        if (info->role == ROLE_PASSIVE && !info->accepted)
            /* Never returned by accept(): the connection still happened. */
            emit_from_info(EV_ACCEPT, sk, now, info->open_ts_ns, info, EVF_UNATTRIBUTED);
        emit_from_info(EV_CLOSE, sk, now, now, info, info->pid ? 0 : EVF_UNATTRIBUTED);
        socks.delete(&sk_key);
        return;
    }
    /* Opened before the recording started: close it with what the socket says. */
    struct sock_info unknown = {};
    if (!sock_is_tcp(sk) || !read_tuple(sk, &unknown) || !netns_kept(unknown.netns))
        return;
    emit_from_info(EV_CLOSE, sk, now, now, &unknown, EVF_UNATTRIBUTED);
}

static __always_inline int task_is_kernel_thread(const void *task)
{
    unsigned int flags = 0;
    bpf_probe_read_kernel(&flags, sizeof(flags), (const char *)task + OFF_TASK_FLAGS);
    return (flags & PF_KTHREAD) != 0;
}

/* Whether process `pid` forks (it did while the programs ran, as far as forked_at recalls).
 * Not only since the socket opened: a socket it closed before its next fork must be seen
 * released then, or that fork's child would count as holding it until its CLOSE. */
static __always_inline int forks(u32 pid)
{
    return forked_at.lookup(&pid) != NULL;
}

/* ESTABLISHED -> FIN_WAIT1 or CLOSE_WAIT -> LAST_ACK: only close() and shutdown() cause them,
 * in the context of the process that dropped the socket's last reference (also at its exit;
 * a kernel thread when the kernel deferred the release). When that process is not the
 * socket's recorded owner, the socket had moved: to a forked child, or to a process it was
 * passed to. When it is the owner, but a process that forks, its children may have held it,
 * and this says none does any more. Only then is an event made: the usual close by a process
 * that does not fork costs none. */
static __always_inline void on_close_in_process(u64 sk_key, int newstate)
{
    struct sock_info *info = socks.lookup(&sk_key);
    if (!info || !info->pid)
        return;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid == info->pid && !forks(pid))
        return;
    if (task_is_kernel_thread((const void *)bpf_get_current_task()))
        return;
    struct sock_info closer = *info;
    u32 owner = info->pid;
    closer.pid = pid;
    bpf_get_current_comm(&closer.comm, sizeof(closer.comm));
    u64 now = bpf_ktime_get_ns();
    EMIT(now, e, {
        fill_from_info(e, EV_OWNER, (const void *)sk_key, now, &closer, 0);
        e->aux = owner;
        e->aux2 = newstate;
    });
}

RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    const void *sk = (const void *)ctx->args[0];
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];
    u64 sk_key = (u64)sk;
    if (newstate == TCP_SYN_SENT) {
        if (oldstate == TCP_CLOSE)
            on_connect_start(sk, sk_key);
    } else if (newstate == TCP_ESTABLISHED) {
        if (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)
            on_established(sk, sk_key, oldstate);
    } else if (newstate == TCP_CLOSE) {
        on_close(sk, sk_key, oldstate);
    } else if (FOLLOW_FORKS && ((newstate == TCP_FIN_WAIT1 && oldstate == TCP_ESTABLISHED) ||
                                (newstate == TCP_LAST_ACK && oldstate == TCP_CLOSE_WAIT))) {
        on_close_in_process(sk_key, newstate);
    }
    return 0;
}

/* The socket behind file descriptor `fd` of the current task. */
static __always_inline u64 fd_to_sock(int fd)
{
    const char *task = (const char *)bpf_get_current_task();
    void *files = NULL, *fdt = NULL, *file = NULL, *socket = NULL, *sk = NULL;
    u64 table[SPAN_WORDS(FDT)];
    bpf_probe_read_kernel(&files, sizeof(files), task + OFF_TASK_FILES);
    if (!files)
        return 0;
    bpf_probe_read_kernel(&fdt, sizeof(fdt), (char *)files + OFF_FILES_FDT);
    if (!fdt)
        return 0;
    SPAN_READ(table, fdt, FDT);
    unsigned int max_fds = SPAN_GET(table, FDT, FDTABLE_MAX_FDS, unsigned int);
    void **fd_array = SPAN_GET(table, FDT, FDTABLE_FD, void **);
    if ((unsigned int)fd >= max_fds || !fd_array)
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
    struct sock_info *entry = socks.lookup(&sk_key);
    if (!entry || entry->role != ROLE_PASSIVE || entry->accepted)
        return 0;
    /* The socket is not locked here: a softirq on this CPU can close it (its program runs
     * over this one) and free or reuse the entry. So the entry is changed as a copy, put
     * back only if its key is still there, and the accept emitted only then. */
    struct sock_info info = *entry;
    info.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&info.comm, sizeof(info.comm));
    info.accepted = 1;
    /* bcc's map.update() takes no flags and writes BPF_ANY into the call it generates,
     * which the preprocessor then expands: BPF_EXIST here (checked by
     * tests/integration/recorder/test_capture.py, which fails if bcc ever stops naming it). */
    int replaced;
#define BPF_ANY BPF_EXIST
    replaced = socks.update(&sk_key, &info);
#undef BPF_ANY
    if (replaced != 0)
        return 0;
    emit_from_info(EV_ACCEPT, (const void *)sk_key, bpf_ktime_get_ns(), info.open_ts_ns, &info, 0);
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

/* -- processes -------------------------------------------------------------------------- */

/* Where the command line of the process that just exec'd is: [arg_start, arg_end) of its
 * new memory, which exec has just filled (argv, NUL-separated; the environment follows). */
static __always_inline u64 exec_args_start(const void *task, u32 *len)
{
    const void *mm = NULL;
    unsigned long start = 0, end = 0;
    bpf_probe_read_kernel(&mm, sizeof(mm), (const char *)task + OFF_TASK_MM);
    if (mm) {
        bpf_probe_read_kernel(&start, sizeof(start), (const char *)mm + OFF_MM_ARG_START);
        bpf_probe_read_kernel(&end, sizeof(end), (const char *)mm + OFF_MM_ARG_END);
    }
    u64 length = end > start ? end - start : 0;
    *len = length > 0xFFFFFFFF ? 0xFFFFFFFF : (u32)length;
    return start;
}

/* The id of the task's cgroup in the v1 hierarchy of controller CGROUP_V1_SUBSYS (its
 * kernfs node's id, the inode of the cgroup's directory); 0 where the host has no v1
 * controller. v1-only hosts keep every task in the unified hierarchy's root, so there the
 * unified id above names no container and this one does. */
static __always_inline u64 task_v1_cgroup_id(const void *task)
{
#if CGROUP_V1_SUBSYS >= 0
    const void *css_set = NULL, *css = NULL, *cgroup = NULL, *kn = NULL;
    u64 id = 0;
    bpf_probe_read_kernel(&css_set, sizeof(css_set), (const char *)task + OFF_TASK_CGROUPS);
    if (!css_set)
        return 0;
    bpf_probe_read_kernel(&css, sizeof(css), (const char *)css_set + OFF_CSS_SET_SUBSYS +
                          CGROUP_V1_SUBSYS * sizeof(void *));
    if (!css)
        return 0;
    bpf_probe_read_kernel(&cgroup, sizeof(cgroup), (const char *)css + OFF_CSS_CGROUP);
    if (!cgroup)
        return 0;
    bpf_probe_read_kernel(&kn, sizeof(kn), (const char *)cgroup + OFF_CGROUP_KN);
    if (!kn)
        return 0;
    bpf_probe_read_kernel(&id, sizeof(id), (const char *)kn + OFF_KERNFS_NODE_ID);
    return id;
#else
    return 0;
#endif
}

/* The piece of the command line at ``offset`` (less than ``len``), never past its end: what
 * follows it is the environment. */
static __always_inline void fill_args(struct event *e, u32 pid, u64 start, u32 offset, u32 len)
{
    e->kind = EV_ARGS;
    e->pid = pid;
    e->aux = offset;
    e->aux2 = len;
    u32 piece = len - offset;
    if (piece > ARGS_PIECE)
        piece = ARGS_PIECE;
    e->lport = piece;
    /* ``piece`` again (1 to ARGS_PIECE, a power of two), in a form whose bound the verifier
     * sees on the register passed; hidden from the compiler first, which would fold it. */
    asm volatile("" : "+r"(piece));
    u32 size = ((piece - 1) & (ARGS_PIECE - 1)) + 1;
    bpf_probe_read_user(e->args, size, (const void *)(start + offset));
}

static __always_inline void fill_exec(struct event *e, const void *task, u32 pid,
                                      const void *args, u32 data_loc_filename)
{
    e->kind = EV_EXEC;
    e->pid = pid;
    /* The cgroups the process runs in: its container, also for a process no /proc walk
     * sees. User space maps ids to containers (recorder/cgroups.py). */
    e->sock_id = bpf_get_current_cgroup_id();
    e->bytes_sent = task_v1_cgroup_id(task);
    e->aux = task_ppid(task);
    e->netns = task_netns(task);
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    unsigned short loc = data_loc_filename & 0xFFFF;
    unsigned short len = data_loc_filename >> 16;
    if (len > sizeof(e->filename))
        e->flags |= EVF_TRUNCATED;
    bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (const char *)args + loc);
}

/* The EXEC and its pieces go in one record, so that the decoders find them together: the
 * stage is handed over first when it has no room for all of them. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 now = bpf_ktime_get_ns();
    const void *task = (const void *)bpf_get_current_task();
#if NETNS_FILTER
    if (!netns_kept(task_netns(task)))
        return 0;
#endif
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u32 len = 0;
    u64 start = EXEC_ARGS_PIECES ? exec_args_start(task, &len) : 0;
    struct stage *s = stage_hold();
    if (s) {
        if (s->hdr.count + 1 + EXEC_ARGS_PIECES > STAGE_MAX)
            stage_flush(s, now);
        struct event *e = stage_slot(s, now);
        if (e) {
            fill_exec(e, task, pid, args, args->data_loc_filename);
            stage_add(s);
#pragma unroll
            for (u32 i = 0; i < EXEC_ARGS_PIECES; i++) {
                u32 offset = i * ARGS_PIECE;
                if (offset >= len)
                    break;
                struct event *piece = stage_slot(s, now);
                if (!piece)
                    break;
                fill_args(piece, pid, start, offset, len);
                stage_add(s);
            }
            stage_due(s, now);
        }
        stage_release(s);
        return 0;
    }
    stat_add(ST_EVENTS, 1 + EXEC_ARGS_PIECES);  /* as many as the record has room for */
    struct lone_exec_record *r = events.ringbuf_reserve(sizeof(struct lone_exec_record));
    if (!r) {
        count_lost(1 + EXEC_ARGS_PIECES, now);
        return 0;
    }
    __builtin_memset(r, 0, sizeof(*r));
    r->hdr.cpu = bpf_get_smp_processor_id();
    r->hdr.first_ts_ns = now;
    r->ev[0].ts_ns = now;
    fill_exec(&r->ev[0], task, pid, args, args->data_loc_filename);
#pragma unroll
    for (u32 i = 0; i < EXEC_ARGS_PIECES; i++) {
        r->ev[1 + i].ts_ns = now;
        if (i * ARGS_PIECE < len) {
            fill_args(&r->ev[1 + i], pid, start, i * ARGS_PIECE, len);
        } else {
            /* unused: an empty piece, so that the record holds what it says */
            r->ev[1 + i].kind = EV_ARGS;
            r->ev[1 + i].pid = pid;
        }
    }
    r->hdr.count = 1 + EXEC_ARGS_PIECES;
    events.ringbuf_submit(r, 0);
    return 0;
}

static __always_inline void fill_exit(struct event *e, const void *task, u32 pid)
{
    e->kind = EV_EXIT;
    e->pid = pid;
    e->aux = task_ppid(task);
    e->netns = task_netns(task);
    int exit_code = 0;
    bpf_probe_read_kernel(&exit_code, sizeof(exit_code), (const char *)task + OFF_TASK_EXIT_CODE);
    e->aux2 = exit_code;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    if (!args->group_dead)
        return 0;  /* a thread ended, not the process */
    u64 now = bpf_ktime_get_ns();
    const void *task = (const void *)bpf_get_current_task();
#if NETNS_FILTER
    if (!netns_kept(task_netns(task)))
        return 0;
#endif
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    EMIT(now, e, fill_exit(e, task, pid));
    return 0;
}

/* A new process (not a thread): it holds every socket its parent held. Raw, for the task
 * pointers (the classic tracepoint gives thread ids only, and no way to tell a thread). */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
#if FOLLOW_FORKS
    const void *parent = (const void *)ctx->args[0];
    const void *child = (const void *)ctx->args[1];
    u32 child_pid = 0, child_tgid = 0;
    bpf_probe_read_kernel(&child_pid, sizeof(child_pid), (const char *)child + OFF_TASK_PID);
    bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid), (const char *)child + OFF_TASK_TGID);
    if (child_pid != child_tgid || task_is_kernel_thread(parent))
        return 0;  /* a thread of its parent's process, or a kernel thread's child */
    u64 now = bpf_ktime_get_ns();
    u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
    forked_at.update(&parent_tgid, &now);
#if NETNS_FILTER
    if (!netns_kept(task_netns(child)))
        return 0;
#endif
    EMIT(now, e, {
        e->kind = EV_FORK;
        e->pid = child_tgid;
        e->aux = parent_tgid;  /* the process whose sockets it holds */
        /* the child starts in its parent's cgroups */
        e->sock_id = bpf_get_current_cgroup_id();
        e->bytes_sent = task_v1_cgroup_id((const void *)bpf_get_current_task());
        e->netns = task_netns(child);
        bpf_get_current_comm(&e->comm, sizeof(e->comm));
    });
#endif
    return 0;
}

/* Not attached: the recorder runs this on every CPU in turn (BPF_PROG_TEST_RUN on that CPU,
 * from an interrupt there), tick_hz times a second. It hands over the events that have
 * waited long enough, or all of them once user space sets control[0] (shutdown). A stage
 * held by the program this interrupted is left for the next tick, and returns 1. */
int flush_stage(struct bpf_raw_tracepoint_args *ctx)
{
    if (!STAGING)
        return 0;
    struct stage *s = stage_hold();
    if (!s)
        return 1;  /* tried again at shutdown: the program this interrupted holds it */
    if (s->hdr.count) {
        u32 slot = CTL_FLUSH_ALL;
        u64 now = bpf_ktime_get_ns();
        u64 *flush_all = control.lookup(&slot);
        if ((flush_all && *flush_all) || now - s->hdr.first_ts_ns >= STAGE_MAX_AGE_NS)
            stage_flush(s, now);
    }
    stage_release(s);
    return 0;
}
