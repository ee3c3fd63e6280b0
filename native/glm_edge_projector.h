/* glm-edge native projector: the GLM-4.6V downsample + merger on a ggml backend.
 *
 * Loads `projector-<F32|F16|Q8_0>.gguf` (arch "glm-edge-projector", written by convert/projector_gguf.py)
 * onto one ggml backend (CUDA, Metal, Vulkan or CPU; the CPU also runs any op the device lacks) and maps
 * one image's ViT output [n_rows, hidden] (row-major float32, 2x2 merge-block row order) to
 * [n_rows / merge^2, out_hidden] decoder embeddings:
 *
 *     concat(merge^2 rows) @ downsample^T + b -> @ proj^T -> LayerNorm(eps) -> GELU(erf)
 *     -> down(silu(gate(h)) * up(h))
 *
 * Every function that can fail reports it by return value with a message; nothing aborts the process on
 * bad input (shapes, types and metadata are checked before any ggml call that would assert).
 * A handle is not thread-safe: one gep_run at a time per handle.
 */
#ifndef GLM_EDGE_PROJECTOR_H
#define GLM_EDGE_PROJECTOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define GEP_API __declspec(dllexport)
#else
#define GEP_API __attribute__((visibility("default")))
#endif

#define GEP_ABI_VERSION 1

typedef struct gep_projector gep_projector;

/* GEP_ABI_VERSION of the built library (the binding refuses another). */
GEP_API int gep_abi_version(void);

/* Load a projector GGUF. device: "auto" (first GPU, then integrated GPU, then CPU), "cpu", or a ggml
 * backend family such as "cuda", "metal", "vulkan" (case-insensitive; "metal" also matches ggml's "MTL").
 * n_threads <= 0: the CPU backend's default. Returns NULL on failure with a message in err. */
GEP_API gep_projector * gep_load(const char * path, const char * device, int n_threads, char * err, size_t err_len);

/* in: [n_rows, hidden] float32 row-major; out: [n_rows / merge^2, out_hidden] float32.
 * Returns 0 on success; otherwise nonzero and gep_last_error() says why. */
GEP_API int gep_run(gep_projector * p, const float * in, int64_t n_rows, float * out);

GEP_API const char * gep_last_error(const gep_projector * p);
GEP_API void gep_free(gep_projector * p);

/* The backend doing the work ("CPU", "CUDA0", "MTL0", ...) and its device's description. */
GEP_API const char * gep_backend_name(const gep_projector * p);
GEP_API const char * gep_device_description(const gep_projector * p);

GEP_API int64_t gep_hidden_size(const gep_projector * p);
GEP_API int64_t gep_out_hidden_size(const gep_projector * p);
GEP_API int64_t gep_intermediate_size(const gep_projector * p);
GEP_API int64_t gep_merge_size(const gep_projector * p);
GEP_API float gep_layer_norm_eps(const gep_projector * p);
GEP_API size_t gep_weight_bytes(const gep_projector * p);
/* The ggml buffer types holding the weights, comma-separated ("CPU", "CPU,AMX", "CUDA0", ...). */
GEP_API const char * gep_weight_buffers(const gep_projector * p);
GEP_API int64_t gep_chunk_rows(const gep_projector * p); /* merged rows computed per graph */

GEP_API int gep_n_tensors(const gep_projector * p);
GEP_API const char * gep_tensor_name(const gep_projector * p, int i);
GEP_API const char * gep_tensor_type(const gep_projector * p, int i);

/* Writes "name|type|description\n" per ggml device of this build into buf (truncated to buf_len).
 * type is cpu, gpu, igpu, accel or meta. Returns the number of devices. */
GEP_API int gep_list_devices(char * buf, size_t buf_len);

#ifdef __cplusplus
}
#endif

#endif
