/* The records the BPF programs hand to user space: the one definition of their layout.
 *
 * Included by the programs (bpf/tcp_events.c, compiled by bcc, which defines u8..u64) and by
 * the C append path (eventlog/_native.c, which defines SCOPE_USER_SPACE first). The Python
 * decoder (eventlog/kernel_records.py) reads the same bytes with a struct format string that
 * tests/unit/log/test_kernel_records.py checks against this header, compiled. All fields
 * little-endian (the host's order), addresses in network order as the kernel keeps them. */
#ifndef SCOPE_TCP_EVENTS_H
#define SCOPE_TCP_EVENTS_H

#ifdef SCOPE_USER_SPACE
#include <stdint.h>
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#endif

#define EV_CONNECT 1
#define EV_ACCEPT 2
#define EV_CLOSE 3
#define EV_CONNECT_FAILED 4
#define EV_EXEC 5
#define EV_EXIT 6
/* Kinds 7-11 are the log's own (snapshots, conntrack, containers), never the kernel's. */
#define EV_FORK 12            /* a process forked: pid = the child, aux = the parent */
#define EV_OWNER 13           /* a process dropped a socket's last reference (closed it) and
                                 is not its recorded owner, or is but forks: pid = that
                                 process, aux = the owner */
/* Not an event: a piece of the command line of the EXEC just before it in the same record
 * (same ts_ns and pid). The decoders join the pieces into that EXEC. */
#define EV_ARGS 64
#define ARGS_PIECE 64         /* bytes of a command line in one EV_ARGS record (a power of 2) */

/* flags */
#define EVF_PASSIVE 0x1       /* the socket was opened by accept(), not connect() */
#define EVF_UNATTRIBUTED 0x2  /* no process known: opened before the recording, or never accepted */
#define EVF_TRUNCATED 0x4     /* EXEC filename longer than the record holds */

/* Events a CPU stages before it hands them over as one record. The consumer's cost is
 * partly per record (reading, ordering, merging): 240 took 7-9% less of its CPU per event
 * than 64 did. A stage is one value of a per-CPU array, which the kernel keeps under 32 KiB
 * (PCPU_MIN_UNIT_SIZE): 16 + 240 * 128 + 8 bytes. */
#define STAGE_MAX 240

struct event {                /* 128 bytes */
    u64 ts_ns;                /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 sock_id;              /* per-recording socket identity, 0 if unknown;
                                 EXEC, FORK: the process's cgroup id (unified hierarchy) */
    u64 bytes_sent;           /* CLOSE: tcp_sock.bytes_acked;
                                 EXEC, FORK: the process's cgroup id in one v1 hierarchy */
    u64 bytes_received;       /* CLOSE: tcp_sock.bytes_received */
    u32 pid;                  /* thread group id of the process the event belongs to */
    u32 netns;                /* network namespace inode */
    u32 aux;                  /* CONNECT_FAILED: sk_err; EXEC/EXIT: parent's tgid;
                                 FORK: the forking process; OWNER: the socket's recorded
                                 owner; ARGS: where its piece begins in the command line */
    u16 lport;                /* ARGS: its piece's length */
    u16 rport;
    u8 kind;
    u8 family;
    u16 flags;
    u32 aux2;                 /* EXIT: exit code; OWNER: the state the close moved the socket
                                 to (4 FIN_WAIT1, 9 LAST_ACK); ARGS: the whole command line's
                                 length */
    union {
        struct {
            char comm[16];
            union {
                struct {
                    u8 laddr[16];
                    u8 raddr[16];
                };
                char filename[56];    /* EXEC */
            };
        };
        char args[ARGS_PIECE];        /* ARGS: its piece of the command line (at comm) */
    };
};

struct stage_header {         /* 16 bytes, then `count` events */
    u32 count;
    u32 cpu;
    u64 first_ts_ns;
};

#ifdef SCOPE_USER_SPACE
_Static_assert(sizeof(struct event) == 128, "struct event is 128 bytes");
_Static_assert(sizeof(struct stage_header) == 16, "struct stage_header is 16 bytes");
#endif

#endif
