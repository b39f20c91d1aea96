/*
 * Reference for scripts/bench_exits.py: the same KVM_RUN loop pykvm runs, in C.
 *
 * Sets up one vCPU in 64-bit mode exactly as pykvm's long-mode loader does (GDT at
 * 0x500, identity 2 MiB pages from 0x1000, CS.L=1, CR0 0x80050033, CR4.PAE,
 * EFER LME|LMA|SCE), loads a flat image at 0x100000, enables the same sync-regs
 * mask, and loops on KVM_RUN handling port-I/O exits until HLT. Prints
 * "<exits> <seconds> <sink> <CPU seconds>" (the loop's wall and CPU time, user + system) so
 * the Python side can compute the ratios.
 *
 * usage: bench_exits IMAGE MEMORY_BYTES
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define LOAD_ADDR 0x100000ULL
#define GDT_ADDR 0x500ULL
#define PML4_ADDR 0x1000ULL
#define PDPT_ADDR 0x2000ULL
#define PD_ADDR 0x3000ULL

static void die(const char *what) { perror(what); exit(1); }

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, int l, int db) {
    memset(s, 0, sizeof(*s));
    s->base = 0; s->limit = 0xffffffff; s->selector = sel; s->type = type;
    s->present = 1; s->dpl = 0; s->db = db; s->s = 1; s->l = l; s->g = 1;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s IMAGE MEMORY_BYTES\n", argv[0]); return 2; }
    size_t mem_size = strtoull(argv[2], NULL, 0);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0,
        .memory_size = mem_size, .userspace_addr = (uint64_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    size_t n = fread(mem + LOAD_ADDR, 1, mem_size - LOAD_ADDR, f);
    fclose(f);
    if (n == 0) { fprintf(stderr, "empty image\n"); return 1; }

    uint64_t *gdt = (uint64_t *)(mem + GDT_ADDR);
    gdt[0] = 0;
    gdt[1] = 0x00cf9b000000ffffULL;  /* 0x08 code32 */
    gdt[2] = 0x00cf93000000ffffULL;  /* 0x10 data */
    gdt[3] = 0x00af9b000000ffffULL;  /* 0x18 code64 */
    uint64_t *pml4 = (uint64_t *)(mem + PML4_ADDR), *pdpt = (uint64_t *)(mem + PDPT_ADDR);
    pml4[0] = PDPT_ADDR | 3;
    pdpt[0] = PD_ADDR | 3;
    uint64_t *pd = (uint64_t *)(mem + PD_ADDR);
    for (int i = 0; i < 512; i++) pd[i] = ((uint64_t)i << 21) | 0x83;

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    struct { struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[256]; } cpuid = { .c.nent = 256 };
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    set_seg(&sregs.cs, 0x18, 0xb, 1, 0);
    set_seg(&sregs.ds, 0x10, 0x3, 0, 1);
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.gdt.base = GDT_ADDR; sregs.gdt.limit = 4 * 8 - 1;
    sregs.cr0 = 0x80050033; sregs.cr3 = PML4_ADDR; sregs.cr4 = 0x20;
    sregs.efer = 0x501;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = LOAD_ADDR, .rflags = 2, .rsp = 0x80000 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
    run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;

    struct timespec t0, t1;
    struct rusage r0, r1;
    unsigned long exits = 0, sink = 0;
    getrusage(RUSAGE_SELF, &r0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            die("KVM_RUN");
        }
        exits++;
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT) sink += data[0];
            else memset(data, 0xff, run->io.size * run->io.count);
            continue;
        }
        if (run->exit_reason == KVM_EXIT_HLT) break;
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &r1);
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6
               + (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    printf("%lu %.6f %lu %.6f\n", exits, secs, sink, cpu);
    return 0;
}
