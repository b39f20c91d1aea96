"""Control-register, EFER, RFLAGS and MSR constants (Intel SDM vol. 3, ch. 2)."""

# CR0
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31

# CR4
CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_MCE = 1 << 6
CR4_PGE = 1 << 7
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_OSXSAVE = 1 << 18
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21

# EFER (MSR 0xc0000080)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

# RFLAGS
FLAG_CF = 1 << 0
FLAG_FIXED = 1 << 1  # always reads as 1
FLAG_PF = 1 << 2
FLAG_AF = 1 << 4
FLAG_ZF = 1 << 6
FLAG_SF = 1 << 7
FLAG_TF = 1 << 8
FLAG_IF = 1 << 9
FLAG_DF = 1 << 10
FLAG_OF = 1 << 11
FLAG_IOPL = 3 << 12
FLAG_NT = 1 << 14
FLAG_RF = 1 << 16
FLAG_VM = 1 << 17
FLAG_AC = 1 << 18
FLAG_ID = 1 << 21

# MSRs
MSR_IA32_TSC = 0x10
MSR_IA32_APIC_BASE = 0x1B
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_PAT = 0x277
MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_TSC_AUX = 0xC0000103
MSR_IA32_MC0_CTL = 0x400
MSR_AMD64_HWCR = 0xC0010015

# CPUID leaf 0 vendor names of the processors that follow AMD's rules, and the same as the
# (EBX, EDX, ECX) triples leaf 0 returns.
AMD_VENDOR_NAMES = (b"AuthenticAMD", b"AMDisbetter!", b"HygonGenuine")
AMD_VENDORS = frozenset(tuple(int.from_bytes(name[i:i + 4], "little") for i in (0, 4, 8))
                        for name in AMD_VENDOR_NAMES)

# Exception vectors
EXC_DE = 0
EXC_DB = 1
EXC_NMI = 2
EXC_BP = 3
EXC_OF = 4
EXC_BR = 5
EXC_UD = 6
EXC_NM = 7
EXC_DF = 8
EXC_TS = 10
EXC_NP = 11
EXC_SS = 12
EXC_GP = 13
EXC_PF = 14
EXC_MF = 16
EXC_AC = 17

# Linux's 32-bit user code selector, which PVM puts in MSR_STAR's SYSRET field on conversion.
USER32_CS = 0x23
