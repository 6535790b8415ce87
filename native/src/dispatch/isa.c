/* Run-time ISA detection and selection.
 *
 * x86-64: cpuid for the feature bits and xgetbv for the OS saving the
 * AVX / AVX-512 register state. arm64: getauxval(AT_HWCAP). The active ISA is
 * the best detected one unless EDGE_ISA names another; edge_isa_set changes
 * it (tests use this to run every path the machine can execute).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t) edx << 32) | eax;
}

static int detect_x86(edge_isa isa) {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
  const int osxsave = (ecx >> 27) & 1, fma = (ecx >> 12) & 1, avx = (ecx >> 28) & 1;
  if (!osxsave || !avx || !fma) return 0;
  const uint64_t xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return 0; /* XMM and YMM state */
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
  const int avx2 = (ebx >> 5) & 1;
  if (isa == EDGE_ISA_AVX2) return avx2;
  const int avx512f = (ebx >> 16) & 1, avx512bw = (ebx >> 30) & 1, avx512vl = (ebx >> 31) & 1;
  const int avx512vbmi = (ecx >> 1) & 1, avx512vnni = (ecx >> 11) & 1;
  const int zmm_state = (xcr0 & 0xE6) == 0xE6; /* opmask, ZMM_Hi256, Hi16_ZMM */
  return avx2 && avx512f && avx512bw && avx512vl && avx512vbmi && avx512vnni && zmm_state;
}
#endif

#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

int edge_isa_supported(edge_isa isa) {
  switch (isa) {
    case EDGE_ISA_SCALAR: return 1;
#if defined(__x86_64__) || defined(_M_X64)
    case EDGE_ISA_AVX2:
    case EDGE_ISA_AVX512VNNI: return detect_x86(isa);
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEON: return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
    case EDGE_ISA_NEONDOT: return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    default: return 0;
  }
}

edge_isa edge_isa_detect(void) {
  static const edge_isa preference[] = {EDGE_ISA_AVX512VNNI, EDGE_ISA_AVX2, EDGE_ISA_NEONDOT, EDGE_ISA_NEON};
  for (size_t i = 0; i < sizeof(preference) / sizeof(preference[0]); i++) {
    if (edge_isa_supported(preference[i])) return preference[i];
  }
  return EDGE_ISA_SCALAR;
}

const char* edge_isa_name(edge_isa isa) {
  switch (isa) {
    case EDGE_ISA_SCALAR: return "scalar";
    case EDGE_ISA_AVX2: return "avx2";
    case EDGE_ISA_AVX512VNNI: return "avx512vnni";
    case EDGE_ISA_NEON: return "neon";
    case EDGE_ISA_NEONDOT: return "neondot";
  }
  return "unknown";
}

static atomic_int active_isa = -1;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_active_isa(void) {
  edge_isa chosen = edge_isa_detect();
  const char* forced = getenv("EDGE_ISA");
  if (forced != NULL && forced[0] != '\0') {
    for (int i = EDGE_ISA_SCALAR; i <= EDGE_ISA_NEONDOT; i++) {
      /* An unsupported or unknown name keeps the detected ISA: the Python
       * layer reports it; a C library must not abort at load. */
      if (strcmp(forced, edge_isa_name((edge_isa) i)) == 0 && edge_isa_supported((edge_isa) i)) {
        chosen = (edge_isa) i;
      }
    }
  }
  atomic_store(&active_isa, (int) chosen);
}

edge_isa edge_isa_get(void) {
  pthread_once(&init_once, init_active_isa);
  return (edge_isa) atomic_load(&active_isa);
}

edge_status edge_isa_set(edge_isa isa) {
  pthread_once(&init_once, init_active_isa);
  if ((int) isa < EDGE_ISA_SCALAR || (int) isa > EDGE_ISA_NEONDOT) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "unknown ISA %d", (int) isa);
  }
  if (!edge_isa_supported(isa)) {
    return edge_fail(EDGE_ERR_UNSUPPORTED_ISA, "ISA %s is not supported by this CPU or build (detected: %s)",
                     edge_isa_name(isa), edge_isa_name(edge_isa_detect()));
  }
  atomic_store(&active_isa, (int) isa);
  return EDGE_OK;
}
