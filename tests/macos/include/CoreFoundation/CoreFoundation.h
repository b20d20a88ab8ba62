// Stand-in for the few CoreFoundation declarations that Apple's metal-cpp headers use,
// for compiling the Metal host glue on Linux (tests/test_macos_build.py). Not an SDK.
#pragma once
typedef double CFTimeInterval;
typedef const void* CFTypeRef;
typedef const struct __CFString* CFStringRef;
#define __CFStringMakeConstantString(cStr) ((CFStringRef)__builtin___CFStringMakeConstantString(cStr))
