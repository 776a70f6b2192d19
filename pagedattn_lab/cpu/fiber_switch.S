/* Fiber context switch for the CPU executor (x86-64 and AArch64, ELF and Mach-O).
 *
 *   void pal_switch(void **save_sp, void *new_sp);
 * pushes the callee-saved registers on the current stack, stores the stack pointer in
 * *save_sp, loads new_sp and pops the registers saved there. No system call (unlike
 * swapcontext, which saves the signal mask). A new fiber's stack is prepared by
 * runtime.cpp so that the first switch "returns" into pal_tramp, which calls the function
 * held in a callee-saved register (r12 / x19).
 */
#if defined(__APPLE__)
#define SYM(x) _##x
#define HIDE(x) .private_extern _##x
#else
#define SYM(x) x
#define HIDE(x) .hidden x
#endif

#if defined(__x86_64__)
        .text
        .globl SYM(pal_switch)
        HIDE(pal_switch)
        .p2align 4
SYM(pal_switch):
        pushq %rbp
        pushq %rbx
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        movq %rsp, (%rdi)
        movq %rsi, %rsp
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %rbx
        popq %rbp
        ret

        .globl SYM(pal_tramp)
        HIDE(pal_tramp)
        .p2align 4
SYM(pal_tramp):
        call *%r12
        ud2
#if defined(__ELF__)
        .section .note.GNU-stack,"",@progbits
#endif

#elif defined(__aarch64__)
        .text
        .globl SYM(pal_switch)
        HIDE(pal_switch)
        .p2align 4
SYM(pal_switch):
        sub sp, sp, #160
        stp x19, x20, [sp, #0]
        stp x21, x22, [sp, #16]
        stp x23, x24, [sp, #32]
        stp x25, x26, [sp, #48]
        stp x27, x28, [sp, #64]
        stp x29, x30, [sp, #80]
        stp d8, d9, [sp, #96]
        stp d10, d11, [sp, #112]
        stp d12, d13, [sp, #128]
        stp d14, d15, [sp, #144]
        mov x2, sp
        str x2, [x0]
        mov sp, x1
        ldp x19, x20, [sp, #0]
        ldp x21, x22, [sp, #16]
        ldp x23, x24, [sp, #32]
        ldp x25, x26, [sp, #48]
        ldp x27, x28, [sp, #64]
        ldp x29, x30, [sp, #80]
        ldp d8, d9, [sp, #96]
        ldp d10, d11, [sp, #112]
        ldp d12, d13, [sp, #128]
        ldp d14, d15, [sp, #144]
        add sp, sp, #160
        ret

        .globl SYM(pal_tramp)
        HIDE(pal_tramp)
        .p2align 4
SYM(pal_tramp):
        blr x19
        brk #0
#if defined(__ELF__)
        .section .note.GNU-stack,"",%progbits
#endif
#endif
