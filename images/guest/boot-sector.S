/*
 * The boot code of the boot disk's protective MBR: what a legacy BIOS
 * (SeaBIOS under QEMU) runs when it boots the disk. 16-bit real mode at
 * 0x0000:0x7c00, at most 440 bytes (the partition table follows).
 *
 * It prints the boot-sector marker on COM1, then powers the machine off
 * through QEMU's q35/pc PM1a control block (SLP_EN, SLP_TYP=0: S5) and, for
 * Cloud Hypervisor, its ACPI shutdown port; a write to a port nobody claims
 * is dropped. Integer-only, so it runs on every host.
 */
        .code16
        .set COM1_DATA,         0x3f8
        .set COM1_LSR,          0x3fd
        .set LSR_THR_EMPTY,     0x20
        .set QEMU_PM1A_CNT,     0x604
        .set QEMU_POWEROFF,     0x2000
        .set CH_ACPI_PORT,      0x600
        .set CH_POWEROFF,       0x34

        .text
        .globl boot_sector
boot_sector:
        cli
        cld
        xorw %ax, %ax
        movw %ax, %ds
        movw %ax, %ss
        movw $0x7c00, %sp
        /* Some BIOSes enter at 07c0:0000: normalize to 0000:7c00. */
        ljmp $0, $1f
1:      movw $marker, %si
2:      lodsb
        testb %al, %al
        jz 4f
        movb %al, %ah
        movw $COM1_LSR, %dx
3:      inb %dx, %al
        testb $LSR_THR_EMPTY, %al
        jz 3b
        movb %ah, %al
        movw $COM1_DATA, %dx
        outb %al, %dx
        jmp 2b
4:      movw $QEMU_PM1A_CNT, %dx
        movw $QEMU_POWEROFF, %ax
        outw %ax, %dx
        movw $CH_ACPI_PORT, %dx
        movb $CH_POWEROFF, %al
        outb %al, %dx
5:      hlt
        jmp 5b

marker:
        .asciz "TINY-BOOT-SECTOR: the BIOS booted this disk\r\n"
