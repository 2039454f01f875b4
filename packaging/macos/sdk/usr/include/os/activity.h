/*
 * <os/activity.h> for the cross build from Linux: tracing-oslog's wrapper.h includes it but its
 * C code uses nothing from it (its Rust side declares the activity functions itself, resolved
 * in libSystem). See log.h beside this file.
 */
#ifndef COSMIAN_PKCS11_OS_ACTIVITY_H
#define COSMIAN_PKCS11_OS_ACTIVITY_H
#endif
