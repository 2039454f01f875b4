//! [`CallZeroed`]: calls a C function with every argument zeroed (NULL pointers, 0 handles and
//! lengths), whatever its arity: how the C ABI tests reach every slot of a function table.

use std::os::raw::c_ulong;

/// A C function returning a `CK_RV` (an unsigned long), called with zeroed arguments.
pub trait CallZeroed {
    /// # Safety
    /// The function must accept all-zero arguments (a PKCS#11 entry point must: NULL pointers
    /// are `CKR_ARGUMENTS_BAD`, 0 handles invalid).
    unsafe fn call_zeroed(self) -> c_ulong;
}

macro_rules! call_zeroed_for_arity {
    ($($value:ident: $arg:ident),*) => {
        impl<$($arg),*> CallZeroed for unsafe extern "C" fn($($arg),*) -> c_ulong {
            unsafe fn call_zeroed(self) -> c_ulong {
                // SAFETY: the caller's contract; every argument type of a PKCS#11 entry point is a
                // pointer or an integer, for which all-zero bits are a valid value.
                let ($($value,)*): ($($arg,)*) = unsafe { std::mem::zeroed() };
                // SAFETY: the caller's contract: `self` accepts all-zero arguments.
                unsafe { self($($value),*) }
            }
        }
    };
}
call_zeroed_for_arity!(a: A);
call_zeroed_for_arity!(a: A, b: B);
call_zeroed_for_arity!(a: A, b: B, c: C);
call_zeroed_for_arity!(a: A, b: B, c: C, d: D);
call_zeroed_for_arity!(a: A, b: B, c: C, d: D, e: E);
call_zeroed_for_arity!(a: A, b: B, c: C, d: D, e: E, f: F);
call_zeroed_for_arity!(a: A, b: B, c: C, d: D, e: E, f: F, g: G);
call_zeroed_for_arity!(a: A, b: B, c: C, d: D, e: E, f: F, g: G, h: H);
call_zeroed_for_arity!(a: A, b: B, c: C, d: D, e: E, f: F, g: G, h: H, i: I);
