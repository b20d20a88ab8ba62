// Shared by the .metal sources: kernel instantiation by name. Under Apple's
// compiler it emits [[host_name]] instances; under the CI emulator
// (FC_METAL_EMULATOR) it also registers each instance under the same name.
#pragma once

#define FC_CAT_(a, b) a##b
#define FC_CAT(a, b) FC_CAT_(a, b)

// A threadgroup array of COUNT elements (COUNT a constant expression).
#if defined(FC_METAL_EMULATOR)
#define FC_THREADGROUP_ARRAY(T, name, COUNT) T* name = ::fc_emu::threadgroup_array<T>(COUNT)
#elif defined(FC_METAL_TYPECHECK)
#define FC_THREADGROUP_ARRAY(T, name, COUNT) static threadgroup T name[COUNT]
#else
#define FC_THREADGROUP_ARRAY(T, name, COUNT) threadgroup T name[COUNT]
#endif

#if defined(FC_METAL_EMULATOR)
#define FC_INSTANTIATE(name, ...)                                       \
  template decltype(__VA_ARGS__) __VA_ARGS__;                           \
  static const bool FC_CAT(fc_registered_, __COUNTER__) =               \
      ::fc_emu::register_kernel(name, reinterpret_cast<void*>(&__VA_ARGS__));
#elif defined(FC_METAL_TYPECHECK)
// Apple's attributes on an explicit instantiation are not standard C++.
#define FC_INSTANTIATE(name, ...) template decltype(__VA_ARGS__) __VA_ARGS__;
#else
#define FC_INSTANTIATE(name, ...) \
  template [[host_name(name)]] [[kernel]] decltype(__VA_ARGS__) __VA_ARGS__;
#endif

// A plain (non-template) [[kernel]] function, found by its own name; the emulator
// registers it under that name.
#if defined(FC_METAL_EMULATOR)
#define FC_REGISTER(name, fn) \
  static const bool FC_CAT(fc_registered_, __COUNTER__) = ::fc_emu::register_kernel(name, reinterpret_cast<void*>(&fn));
#else
#define FC_REGISTER(name, fn)
#endif
