// LD_PRELOAD library that makes this machine behave as the H200 machine of 2026-11-27: a C++
// exception thrown while a frame of adaptive_encoder/_C is on the stack kills the process
// (SIGSEGV); every other exception, torch's own included, is thrown as usual.
//     gcc -shared -fPIC -O1 -o crash.so crash_on_cpp_error.c -ldl
//     LD_PRELOAD=$PWD/crash.so python -m pytest tests   # what the GPU machine's run would see
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <string.h>

typedef void (*throw_fn)(void*, void*, void (*)(void*));

void __cxa_throw(void* obj, void* tinfo, void (*dest)(void*)) {
  void* frames[64];
  int n = backtrace(frames, 64);
  for (int i = 1; i < n; i++) {
    Dl_info info;
    if (dladdr(frames[i], &info) && info.dli_fname && strstr(info.dli_fname, "adaptive_encoder/_C")) raise(SIGSEGV);
  }
  // libstdc++ is loaded by torch after this library, so RTLD_NEXT does not find it: ask it by name.
  static throw_fn real = 0;
  if (!real) real = (throw_fn)dlsym(dlopen("libstdc++.so.6", RTLD_NOW | RTLD_NOLOAD), "__cxa_throw");
  real(obj, tinfo, dest);
  __builtin_unreachable();
}
