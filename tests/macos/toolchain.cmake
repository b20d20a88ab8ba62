# Cross toolchain for the rehearsal of the macOS (Apple-branch) build on Linux
# (tests/test_macos_build.py): arm64-apple-macos14 objects from Zig's clang, which
# ships Darwin's libc, libc++, objc and dispatch headers; a Mach-O link by LLVM's
# ld64.lld (bin/fc-cross-cxx); `xcrun metal` replaced by a recorder (bin/xcrun).
set(CMAKE_SYSTEM_NAME Darwin)
set(CMAKE_SYSTEM_PROCESSOR arm64)
set(CMAKE_CXX_COMPILER ${CMAKE_CURRENT_LIST_DIR}/bin/fc-cross-cxx)
set(CMAKE_AR /usr/bin/llvm-ar-16 CACHE FILEPATH "")
set(CMAKE_RANLIB /usr/bin/llvm-ranlib-16 CACHE FILEPATH "")
# Darwin's defaults pass Apple-only ranlib flags.
set(CMAKE_CXX_ARCHIVE_CREATE "<CMAKE_AR> qc <TARGET> <OBJECTS>")
set(CMAKE_CXX_ARCHIVE_FINISH "<CMAKE_RANLIB> <TARGET>")
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
# The stand-in CoreFoundation / CoreGraphics / IOSurface typedef headers.
include_directories(SYSTEM ${CMAKE_CURRENT_LIST_DIR}/include)
