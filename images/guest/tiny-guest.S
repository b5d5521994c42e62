/*
 * tiny-guest: the smallest guest that proves a VM really runs.
 *
 * Booted directly as a PVH kernel (an ELF64 file with a Xen PHYS32_ENTRY
 * note) by Cloud Hypervisor and by QEMU, because these machines' nested KVM
 * cannot boot stock Linux kernels while pure port-I/O guests run fine.
 *
 * Behaviour, on COM1 (0x3f8):
 *   - prints the banner "TINY-GUEST-UP\r\n";
 *   - with HALT_AFTER_BANNER defined (the benchmark variant): powers off;
 *   - otherwise echoes every byte it reads, as is; after echoing 'q' it
 *     powers off, after echoing 'r' it reboots (and the banner prints again).
 *
 * Power off and reboot write to the ports of both hypervisors in turn, so one
 * binary serves both: a write to a port nobody claims is simply dropped.
 *
 * The halting variant is chosen with `as --defsym HALT_AFTER_BANNER=1` (what
 * build.rs does; through gcc: `-Wa,--defsym,HALT_AFTER_BANNER=1`). Only C-style
 * comments are used so the file assembles the same with or without cpp.
 *
 * With BZIMAGE defined the same guest is a Linux bzImage instead (linked by
 * tiny-guest-bzimage.ld into a flat file): a boot sector and setup header
 * (boot protocol 2.12, relocatable, 64-bit entry) followed by the code,
 * entered in 64-bit mode at its 0x200 offset the way firmware enters
 * startup_64 (rust-hypervisor-firmware's Boot Loader Specification path
 * loads it at 2 MiB). The code is the same; only the entry differs: it keeps
 * the caller's stack and addresses its banner relative to %rip.
 */

        .set COM1_DATA,             0x3f8
        .set COM1_IER,              0x3f9
        .set COM1_LCR,              0x3fb
        .set COM1_MCR,              0x3fc
        .set COM1_LSR,              0x3fd
        .set LSR_DATA_READY,        0x01
        .set LSR_THR_EMPTY,         0x20

        /* Cloud Hypervisor's ACPI shutdown device: SLP_TYP=5|SLP_EN, or 1 = reset. */
        .set CH_ACPI_PORT,          0x600
        .set CH_POWEROFF,           0x34
        .set CH_REBOOT,             0x01
        /* QEMU pc/q35 PM1a control block as SeaBIOS sets it up: SLP_EN, SLP_TYP=0 (S5). */
        .set QEMU_PM1A_CNT,         0x604
        .set QEMU_POWEROFF,         0x2000
        /* Reset control register (PIIX3 and ICH9): full reset. */
        .set RESET_CONTROL,         0xcf9
        .set RESET_CONTROL_RESET,   0x06
        /* i8042 keyboard controller: pulse the CPU reset line. */
        .set I8042_COMMAND,         0x64
        .set I8042_RESET,           0xfe

        .set XEN_ELFNOTE_PHYS32_ENTRY, 18
        .set STACK_SIZE,            4096

.ifdef BZIMAGE
/*
 * The boot sector and one setup sector; only the setup header matters
 * (Documentation/arch/x86/boot.rst), nothing here runs.
 */
        .section .bzsetup, "a"
        .org 0x1f1
        .byte 1                         /* setup_sects: 1 + the boot sector */
        .word 0                         /* root_flags */
        .long 0                         /* syssize (unused by 64-bit loaders) */
        .word 0, 0, 0                   /* ram_size, vid_mode, root_dev */
        .word 0xaa55                    /* boot_flag */
        .byte 0xeb, 0x66                /* jump over the header to 0x268 */
        .ascii "HdrS"                   /* header magic */
        .word 0x020c                    /* boot protocol version */
        .long 0                         /* realmode_swtch */
        .word 0, 0                      /* start_sys_seg, kernel_version */
        .byte 0                         /* type_of_loader (the loader's) */
        .byte 0x01                      /* loadflags: LOADED_HIGH */
        .word 0                         /* setup_move_size */
        .long 0x100000                  /* code32_start (the loader sets its own) */
        .long 0, 0                      /* ramdisk_image, ramdisk_size */
        .long 0                         /* bootsect_kludge */
        .word 0                         /* heap_end_ptr */
        .byte 0, 0                      /* ext_loader_ver, ext_loader_type */
        .long 0                         /* cmd_line_ptr */
        .long 0x37ffffff                /* initrd_addr_max */
        .long 0x200000                  /* kernel_alignment */
        .byte 1                         /* relocatable_kernel */
        .byte 21                        /* min_alignment: 2 MiB */
        .word 0x0001                    /* xloadflags: XLF_KERNEL_64 */
        .long 2047                      /* cmdline_size */
        .long 0                         /* hardware_subarch */
        .quad 0                         /* hardware_subarch_data */
        .long 0, 0                      /* payload_offset, payload_length */
        .quad 0                         /* setup_data */
        .quad 0x200000                  /* pref_address */
        .long 0x100000                  /* init_size */
        .long 0                         /* handover_offset */
        .org 0x400
.else
/* The PVH entry note: name "Xen", type 18, the 32-bit physical entry. */
        .section .note.Xen, "a", @note
        .balign 4
        .long 2f - 1f                   /* namesz */
        .long 4f - 3f                   /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY  /* type */
1:      .asciz "Xen"
2:      .balign 4
3:      .long pvh_start
4:      .balign 4
.endif

        .text
.ifdef BZIMAGE
        .code64
.else
        .code32
.endif
        .globl pvh_start
        .type pvh_start, @function
/*
 * PVH starts us in flat 32-bit protected mode, paging off, with no stack;
 * as a bzImage, in 64-bit mode on the loader's stack and page tables.
 */
pvh_start:
        cli
        cld
.ifdef BZIMAGE
        movq %rsi, %r12                 /* struct boot_params */
        leaq banner(%rip), %rsi
.else
        movl $stack_top, %esp
        movl $banner, %esi
.endif
        call uart_init
        call puts
.ifdef BZIMAGE
        /*
         * The command line the loader passed (hdr.cmd_line_ptr at 0x228,
         * ext_cmd_line_ptr at 0x0c8 of boot_params): from a disk, its boot
         * entry's `options`. Printed so a test sees what the firmware read.
         */
        movl 0x228(%r12), %esi
        movl 0x0c8(%r12), %eax
        shlq $32, %rax
        orq %rax, %rsi
        testq %rsi, %rsi
        jz 1f
        pushq %rsi
        leaq cmdline_label(%rip), %rsi
        call puts
        popq %rsi
        call puts
        leaq crlf(%rip), %rsi
        call puts
1:
.endif

.ifdef HALT_AFTER_BANNER
        jmp power_off
.else
echo_loop:
        call getc
        movb %al, %bl
        call putc
        cmpb $'q', %bl
        je power_off
        cmpb $'r', %bl
        je reboot
        jmp echo_loop
.endif

/*
 * 115200 8N1, interrupts off: we only poll. The FIFO control register is left
 * alone on purpose: toggling FIFO mode clears the receive buffer, and input
 * may already be waiting there (QEMU feeds piped stdin as soon as it can).
 */
uart_init:
        movw $COM1_IER, %dx
        xorb %al, %al
        outb %al, %dx
        movw $COM1_LCR, %dx
        movb $0x80, %al                 /* DLAB: expose the divisor latch */
        outb %al, %dx
        movw $COM1_DATA, %dx
        movb $1, %al                    /* divisor low: 115200 baud */
        outb %al, %dx
        movw $COM1_IER, %dx
        xorb %al, %al                   /* divisor high */
        outb %al, %dx
        movw $COM1_LCR, %dx
        movb $0x03, %al                 /* 8 data bits, no parity, 1 stop; DLAB off */
        outb %al, %dx
        movw $COM1_MCR, %dx
        movb $0x03, %al                 /* DTR and RTS; loopback stays off */
        outb %al, %dx
        ret

/* %al: the byte to send. Clobbers %dx, keeps %al. */
putc:
        movb %al, %ah
        movw $COM1_LSR, %dx
1:      inb %dx, %al
        testb $LSR_THR_EMPTY, %al
        jz 1b
        movb %ah, %al
        movw $COM1_DATA, %dx
        outb %al, %dx
        ret

/* %esi: NUL-terminated string. */
puts:
1:      lodsb
        testb %al, %al
        jz 2f
        call putc
        jmp 1b
2:      ret

/* Returns the next received byte in %al; spins until one arrives. */
getc:
        movw $COM1_LSR, %dx
1:      inb %dx, %al
        testb $LSR_DATA_READY, %al
        jz 1b
        movw $COM1_DATA, %dx
        inb %dx, %al
        ret

power_off:
        movw $CH_ACPI_PORT, %dx
        movb $CH_POWEROFF, %al
        outb %al, %dx
        movw $QEMU_PM1A_CNT, %dx
        movw $QEMU_POWEROFF, %ax
        outw %ax, %dx
        jmp halt_forever

reboot:
        movw $CH_ACPI_PORT, %dx
        movb $CH_REBOOT, %al
        outb %al, %dx
        movw $RESET_CONTROL, %dx
        movb $RESET_CONTROL_RESET, %al
        outb %al, %dx
        movb $I8042_RESET, %al
        outb %al, $I8042_COMMAND
        /* fall through: if nothing reset us, stop rather than run on */

/* Interrupts are off, so only a reset or power-off ends this. */
halt_forever:
        cli
        hlt
        jmp halt_forever

        .section .rodata
banner:
        .asciz "TINY-GUEST-UP\r\n"
.ifdef BZIMAGE
cmdline_label:
        .asciz "TINY-GUEST-CMDLINE: "
crlf:
        .asciz "\r\n"
.endif

        .bss
        .balign 16
stack_bottom:
        .skip STACK_SIZE
stack_top:
