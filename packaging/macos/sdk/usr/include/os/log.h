/*
 * The part of macOS's <os/log.h> that tracing-oslog's wrapper.c uses, written for this project
 * from Apple's documented interface (os_log(3), the libsystem_trace exports listed in zig's
 * libSystem.tbd): zig ships macOS's libc headers but not <os/log.h>. Only the cross build from
 * Linux puts this folder on the include path; on a Mac the SDK's own header is used.
 *
 * os_log_with_type formats its arguments with clang's __builtin_os_log_format (the buffer
 * layout the unified log expects) and hands them to _os_log_impl with the format string kept
 * in __TEXT,__oslogstring, where `log show` reads it back from the binary.
 */
#ifndef COSMIAN_PKCS11_OS_LOG_H
#define COSMIAN_PKCS11_OS_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct os_log_s *os_log_t;
typedef uint8_t os_log_type_t;

#define OS_LOG_TYPE_DEFAULT ((os_log_type_t)0x00)
#define OS_LOG_TYPE_INFO ((os_log_type_t)0x01)
#define OS_LOG_TYPE_DEBUG ((os_log_type_t)0x02)
#define OS_LOG_TYPE_ERROR ((os_log_type_t)0x10)
#define OS_LOG_TYPE_FAULT ((os_log_type_t)0x11)

struct mach_header;
extern struct mach_header __dso_handle;
extern struct os_log_s _os_log_default;
#define OS_LOG_DEFAULT (&_os_log_default)

os_log_t os_log_create(const char *subsystem, const char *category);
bool os_log_type_enabled(os_log_t log, os_log_type_t type);
void _os_log_impl(void *dso, os_log_t log, os_log_type_t type, const char *format,
                  uint8_t *buf, uint32_t size);

#define os_log_with_type(log, type, format, ...)                                              \
    __extension__({                                                                           \
        os_log_t _cosmian_log = (log);                                                        \
        os_log_type_t _cosmian_type = (type);                                                 \
        if (os_log_type_enabled(_cosmian_log, _cosmian_type)) {                               \
            __attribute__((section("__TEXT,__oslogstring")))                 \
            static const char _cosmian_format[] = format;                                     \
            uint8_t _cosmian_buf[__builtin_os_log_format_buffer_size(format, ##__VA_ARGS__)]; \
            _os_log_impl((void *)&__dso_handle, _cosmian_log, _cosmian_type, _cosmian_format, \
                         __builtin_os_log_format(_cosmian_buf, format, ##__VA_ARGS__),        \
                         (uint32_t)sizeof(_cosmian_buf));                                     \
        }                                                                                     \
    })

#endif
