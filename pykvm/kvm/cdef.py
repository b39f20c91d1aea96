"""The KVM userspace API structs (x86-64) as C declarations, for cffi: pure data, read at build
time by ``_ffi_build.py`` and at run time only by the in-line fallback of ``_ffi.py``.

The layouts follow ``<linux/kvm.h>`` and ``<asm/kvm.h>``; every field is spelled out (no
``...``), so the same text is both cffi's declarations and, in API mode, the C definitions the
compiler lays out (``tests/kvm/test_layout.py`` checks each size against the kernel's values).
"""

TYPES = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;


struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    __u8 padding;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    __u16 padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[4];
};

struct kvm_fpu {
    __u8 fpr[8][16];
    __u16 fcw;
    __u16 fsw;
    __u8 ftwx;
    __u8 pad1;
    __u16 last_opcode;
    __u64 last_ip;
    __u64 last_dp;
    __u8 xmm[16][16];
    __u32 mxcsr;
    __u32 pad2;
};

struct kvm_msr_entry {
    __u32 index;
    __u32 reserved;
    __u64 data;
};

struct kvm_msrs {
    __u32 nmsrs;
    __u32 pad;
    struct kvm_msr_entry entries[];
};

struct kvm_msr_list {
    __u32 nmsrs;
    __u32 indices[];
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    __u32 padding[3];
};

struct kvm_cpuid2 {
    __u32 nent;
    __u32 padding;
    struct kvm_cpuid_entry2 entries[];
};

struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
};

struct kvm_coalesced_mmio_zone {
    __u64 addr;
    __u32 size;
    __u32 pio;        /* a union with __u32 pad in the header: 1 for a port range */
};

struct kvm_guest_debug_arch {
    __u64 debugreg[8];
};

struct kvm_guest_debug {
    __u32 control;
    __u32 pad;
    struct kvm_guest_debug_arch arch;
};

struct kvm_debug_exit_arch {
    __u32 exception;
    __u32 pad;
    __u64 pc;
    __u64 dr6;
    __u64 dr7;
};

struct kvm_translation {
    __u64 linear_address;
    __u64 physical_address;
    __u8 valid;
    __u8 writeable;
    __u8 usermode;
    __u8 pad[5];
};

struct kvm_mp_state {
    __u32 mp_state;
};

struct kvm_interrupt {
    __u32 irq;
};

struct kvm_vcpu_events {
    struct {
        __u8 injected;
        __u8 nr;
        __u8 has_error_code;
        __u8 pending;
        __u32 error_code;
    } exception;
    struct {
        __u8 injected;
        __u8 nr;
        __u8 soft;
        __u8 shadow;
    } interrupt;
    struct {
        __u8 injected;
        __u8 pending;
        __u8 masked;
        __u8 pad;
    } nmi;
    __u32 sipi_vector;
    __u32 flags;
    struct {
        __u8 smm;
        __u8 pending;
        __u8 smm_inside_nmi;
        __u8 latched_init;
    } smi;
    struct {
        __u8 pending;
    } triple_fault;
    __u8 reserved[26];
    __u8 exception_has_payload;
    __u64 exception_payload;
};

struct kvm_sync_regs {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_vcpu_events events;
};

struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u8 padding1[6];

    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;

    __u64 cr8;
    __u64 apic_base;

    union {
        struct { __u64 hardware_exit_reason; } hw;
        struct { __u64 hardware_entry_failure_reason; __u32 cpu; } fail_entry;
        struct { __u32 exception; __u32 error_code; } ex;
        struct {
            __u8 direction;
            __u8 size;
            __u16 port;
            __u32 count;
            __u64 data_offset;
        } io;
        struct { struct kvm_debug_exit_arch arch; } debug;
        struct {
            __u64 phys_addr;
            __u8 data[8];
            __u32 len;
            __u8 is_write;
        } mmio;
        struct {
            __u64 nr;
            __u64 args[6];
            __u64 ret;
            __u32 longmode;
            __u32 pad;
        } hypercall;
        struct {
            __u32 suberror;
            __u32 ndata;
            __u64 data[16];
        } internal;
        struct {
            __u32 suberror;
            __u32 ndata;
            __u64 flags;
            __u8 insn_size;
            __u8 insn_bytes[15];
        } emulation_failure;
        struct {
            __u32 type;
            __u32 ndata;
            __u64 data[16];
        } system_event;
        struct {
            __u8 error;
            __u8 pad[7];
            __u32 reason;
            __u32 index;
            __u64 data;
        } msr;
        char padding[256];
    };

    __u64 kvm_valid_regs;
    __u64 kvm_dirty_regs;
    union {
        struct kvm_sync_regs regs;
        char padding[2048];
    } s;
};
"""

# ioctl(2) is variadic in libc. The compiled (API-mode) module calls it through the C prototype
# of <sys/ioctl.h>; the in-line (ABI-mode) fallback declares it with a fixed third argument,
# because cffi's ABI mode rebuilds a libffi call descriptor for every variadic call (~300 ns,
# more than the syscall's own entry), while the x86-64 calling convention passes a
# pointer-sized third argument in the same register either way and glibc reads it back as
# one pointer.
FUNCTIONS = "int ioctl(int fd, unsigned long request, void *arg);\n"

CDEF = TYPES + FUNCTIONS

# The compiled module's own function: KVM_RUN and the reading of its exit in one C call,
# the answer one small int (see pykvm.kvm.exits: EXIT_*; the in-line fallback computes the same
# in Python, ``Vcpu.exit_call``).
API_FUNCTIONS = "int pykvm_run_exit(int fd, struct kvm_run *run);\n"

# The C source of the compiled module: the same structs, libc's own ioctl prototype, the function.
C_SOURCE = "#include <errno.h>\n#include <sys/ioctl.h>\n" + TYPES + r"""
/* -errno when KVM_RUN fails; else bits 0-4 the exit reason (31: look at kvm_run), bit 5 still
   in PVM mode (EFER.LMA and CS.L in the sync regs), and for a port I/O exit of one element whose
   data is at the usual place (offset 4096): bit 6 out, bits 7-9 the size, bits 10-25 the port,
   bit 26 set. */
int pykvm_run_exit(int fd, struct kvm_run *run)
{
    if (ioctl(fd, 0xAE80 /* KVM_RUN */, (void *)0) < 0)
        return -errno;
    unsigned reason = run->exit_reason;
    int r = reason < 31 ? (int)reason : 31;
    if ((run->s.regs.sregs.efer & (1u << 10)) && run->s.regs.sregs.cs.l)
        r |= 1 << 5;
    if (reason == 2 && run->io.count == 1 && run->io.data_offset == 4096 &&
        (run->io.size == 1 || run->io.size == 2 || run->io.size == 4))
        r |= (run->io.direction ? 1 << 6 : 0) | run->io.size << 7 | (int)run->io.port << 10 | 1 << 26;
    return r;
}
"""


def crc() -> int:
    """What a compiled module records of the declarations it was built from."""
    import zlib

    return zlib.crc32((CDEF + C_SOURCE).encode())
