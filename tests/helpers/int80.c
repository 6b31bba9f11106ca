/*
 * int80: call getpid through the i386 ABI (int $0x80, eax = 20) from a
 * 64-bit process.  Exit 0 when it returned our pid, 1 otherwise.  The
 * kernel reports such a call with AUDIT_ARCH_I386 in seccomp_data.arch,
 * where i386 numbers mean other syscalls than x86_64's.
 */
#include <stdio.h>
#include <unistd.h>

int main(void) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    printf("%ld\n", ret);
    return ret == (long)getpid() ? 0 : 1;
#else
    return 125;
#endif
}
