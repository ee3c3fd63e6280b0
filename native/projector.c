/* glm-edge native projector: see glm_edge_projector.h for the contract.
 *
 * Load: gguf_init_from_file(no_alloc) gives the metadata and one ggml tensor per weight; every key and
 * tensor shape/type is checked here, because ggml/gguf accessors assert (abort the process) on a wrong
 * type. The weights are allocated in one buffer of the chosen backend and read from the file once.
 * Run: a ggml_backend_sched over [device backend, CPU backend] (CPU alone when the device is the CPU)
 * computes the projector graph on up to `chunk` merged rows at a time; its compute buffers are reserved
 * at load for a full chunk, so a run allocates nothing on the device.
 */
#define _FILE_OFFSET_BITS 64
#define _POSIX_C_SOURCE 200809L

#include "glm_edge_projector.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"

#define ARCH "glm-edge-projector"
#define FORMAT_VERSION 1u
#define DEFAULT_CHUNK 1024 /* merged rows per graph: bounds the [chunk, intermediate] temporaries */
#define GRAPH_NODES 64
#define ERR_LEN 512
#define MAX_BUFTS 8

enum {
    T_DS_W, T_DS_B, T_PROJ_W, T_PROJ_B, T_LN_W, T_LN_B, T_GATE_W, T_GATE_B, T_UP_W, T_UP_B, T_DOWN_W, T_DOWN_B,
    T_COUNT
};

static const char * const TENSOR_NAMES[T_COUNT] = {
    "downsample.weight", "downsample.bias", "merger.proj.weight", "merger.proj.bias",
    "merger.post_projection_norm.weight", "merger.post_projection_norm.bias",
    "merger.gate_proj.weight", "merger.gate_proj.bias", "merger.up_proj.weight", "merger.up_proj.bias",
    "merger.down_proj.weight", "merger.down_proj.bias",
};
static const bool TENSOR_OPTIONAL[T_COUNT] = {
    false, false, false, true, false, false, false, true, false, true, false, true,
};

struct gep_projector {
    int64_t hidden, out, inter, merge, chunk;
    float eps;
    struct ggml_context * meta;    /* gguf's tensors: metadata only, never allocated */
    struct gguf_context * gguf;    /* kept for tensor names/types and file offsets */
    int n_bufs;                    /* weight groups: one per buffer type in use */
    struct ggml_context * wctx[MAX_BUFTS];
    ggml_backend_buffer_t wbuf[MAX_BUFTS];
    char buft_names[256];
    ggml_backend_t backend;        /* the device doing the work */
    ggml_backend_t cpu;            /* fallback for ops the device lacks; == backend on CPU */
    ggml_backend_sched_t sched;
    struct ggml_tensor * w[T_COUNT];
    void * graph_mem;              /* metadata arena for per-run graphs */
    size_t graph_mem_size;
    char backend_name[128];
    char device_desc[256];
    char err[ERR_LEN];
};

static void set_err(char * err, size_t len, const char * fmt, ...) {
    if (!err || !len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

int gep_abi_version(void) { return GEP_ABI_VERSION; }

/* --- device choice ------------------------------------------------------------------------------------- */

static bool ieq(const char * a, const char * b) {
    for (; *a && *b; a++, b++) {
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return false;
    }
    return *a == *b;
}

static void ensure_backends_registered(void) {
    /* Static builds register their backends themselves; GGML_BACKEND_DL builds need loading. */
    if (ggml_backend_dev_count() == 0) ggml_backend_load_all();
}

static void device_list(char * buf, size_t len) {
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", ggml_backend_dev_name(ggml_backend_dev_get(i)));
        if (n < 0 || (size_t)n >= len - used) break;
        used += (size_t)n;
    }
}

static ggml_backend_dev_t pick_device(const char * device, char * err, size_t err_len) {
    ensure_backends_registered();
    if (!device || !*device || ieq(device, "auto")) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
        dev = dev ? dev : ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
        dev = dev ? dev : ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        if (!dev) set_err(err, err_len, "ggml has no usable device (no backend registered)");
        return dev;
    }
    if (ieq(device, "cpu")) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        if (!dev) set_err(err, err_len, "ggml has no CPU backend registered");
        return dev;
    }
    const char * family = ieq(device, "metal") ? "MTL" : device;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const char * reg = ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev));
        if (ieq(reg, family) || ieq(ggml_backend_dev_name(dev), device)) return dev;
    }
    char have[256];
    device_list(have, sizeof have);
    set_err(err, err_len, "device '%s' requested but the ggml of this llama-cpp-python has no such backend "
            "(devices: %s); reinstall with `make serve BACKEND=%s` or use device cpu", device, have, device);
    return NULL;
}

int gep_list_devices(char * buf, size_t buf_len) {
    static const char * const TYPES[] = {"cpu", "gpu", "igpu", "accel", "meta"};
    ensure_backends_registered();
    size_t used = 0, n_dev = ggml_backend_dev_count();
    if (buf && buf_len) buf[0] = 0;
    for (size_t i = 0; i < n_dev && buf && buf_len; i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        unsigned t = (unsigned)ggml_backend_dev_type(dev);
        int n = snprintf(buf + used, buf_len - used, "%s|%s|%s\n", ggml_backend_dev_name(dev),
                         t < 5 ? TYPES[t] : "other", ggml_backend_dev_description(dev));
        if (n < 0 || (size_t)n >= buf_len - used) break;
        used += (size_t)n;
    }
    return (int)n_dev;
}

/* --- metadata ---------------------------------------------------------------------------------------- */

static bool key_u32(const struct gguf_context * g, const char * key, int64_t * v, const char * path, char * err, size_t len) {
    int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        set_err(err, len, "%s: GGUF key '%s' is missing; reconvert the bundle", path, key);
        return false;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_UINT32) {
        set_err(err, len, "%s: GGUF key '%s' has type %s, expected uint32", path, key, gguf_type_name(gguf_get_kv_type(g, id)));
        return false;
    }
    *v = (int64_t)gguf_get_val_u32(g, id);
    return true;
}

static bool read_metadata(gep_projector * p, const char * path, char * err, size_t len) {
    const struct gguf_context * g = p->gguf;
    int64_t id = gguf_find_key(g, "general.architecture");
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        set_err(err, len, "%s: GGUF key 'general.architecture' is missing; reconvert the bundle", path);
        return false;
    }
    if (strcmp(gguf_get_val_str(g, id), ARCH) != 0) {
        set_err(err, len, "%s: GGUF architecture '%s', expected '%s'", path, gguf_get_val_str(g, id), ARCH);
        return false;
    }
    int64_t version = 0;
    if (!key_u32(g, ARCH ".format_version", &version, path, err, len)) return false;
    if (version != FORMAT_VERSION) {
        set_err(err, len, "%s: projector format version %lld, this runtime reads %u; reconvert the checkpoint with "
                "this glm-edge version", path, (long long)version, FORMAT_VERSION);
        return false;
    }
    if (!key_u32(g, ARCH ".vision_hidden_size", &p->hidden, path, err, len) ||
        !key_u32(g, ARCH ".out_hidden_size", &p->out, path, err, len) ||
        !key_u32(g, ARCH ".intermediate_size", &p->inter, path, err, len) ||
        !key_u32(g, ARCH ".spatial_merge_size", &p->merge, path, err, len)) {
        return false;
    }
    id = gguf_find_key(g, ARCH ".layer_norm_eps");
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32) {
        set_err(err, len, "%s: GGUF key '" ARCH ".layer_norm_eps' (float32) is missing; reconvert the bundle", path);
        return false;
    }
    p->eps = gguf_get_val_f32(g, id);
    if (p->hidden <= 0 || p->out <= 0 || p->inter <= 0 || p->merge <= 0 || !(p->eps >= 0.0f)) {
        set_err(err, len, "%s: invalid projector sizes (hidden %lld, out %lld, intermediate %lld, merge %lld, eps %g)",
                path, (long long)p->hidden, (long long)p->out, (long long)p->inter, (long long)p->merge, (double)p->eps);
        return false;
    }
    id = gguf_find_key(g, ARCH ".hidden_act");
    if (id >= 0 && (gguf_get_kv_type(g, id) != GGUF_TYPE_STRING || strcmp(gguf_get_val_str(g, id), "silu") != 0)) {
        set_err(err, len, "%s: projector hidden_act is not 'silu'; only SwiGLU mergers are supported", path);
        return false;
    }
    return true;
}

static bool matrix_type_ok(enum ggml_type t) {
    return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16 || ggml_is_quantized(t);
}

static bool check_tensors(gep_projector * p, const char * path, char * err, size_t len) {
    const int64_t k = p->merge * p->merge * p->hidden;
    /* expected [rows, cols] in numpy order; ggml ne = {cols, rows} */
    const int64_t shape[T_COUNT][2] = {
        {p->out, k}, {p->out, 0}, {p->out, p->out}, {p->out, 0}, {p->out, 0}, {p->out, 0},
        {p->inter, p->out}, {p->inter, 0}, {p->inter, p->out}, {p->inter, 0}, {p->out, p->inter}, {p->out, 0},
    };
    for (int i = 0; i < T_COUNT; i++) {
        struct ggml_tensor * t = ggml_get_tensor(p->meta, TENSOR_NAMES[i]);
        p->w[i] = t;
        if (!t) {
            if (TENSOR_OPTIONAL[i]) continue;
            set_err(err, len, "%s: projector tensor '%s' is missing; reconvert the bundle", path, TENSOR_NAMES[i]);
            return false;
        }
        const bool matrix = shape[i][1] != 0;
        const int64_t want0 = matrix ? shape[i][1] : shape[i][0], want1 = matrix ? shape[i][0] : 1;
        if (t->ne[0] != want0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1) {
            if (matrix) {
                set_err(err, len, "%s: tensor %s has shape [%lld, %lld, %lld, %lld] (ggml ne), expected [%lld, %lld]", path,
                        TENSOR_NAMES[i], (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                        (long long)want0, (long long)want1);
            } else {
                set_err(err, len, "%s: tensor %s has %lld x %lld x %lld x %lld values, expected a vector of %lld", path,
                        TENSOR_NAMES[i], (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                        (long long)want0);
            }
            return false;
        }
        if (matrix ? !matrix_type_ok(t->type) : t->type != GGML_TYPE_F32) {
            set_err(err, len, "%s: tensor %s has type %s, expected %s", path, TENSOR_NAMES[i], ggml_type_name(t->type),
                    matrix ? "F32, F16, BF16 or a quantized type" : "F32");
            return false;
        }
    }
    return true;
}

/* --- weights ------------------------------------------------------------------------------------------- */

/* On the CPU, ggml offers "extra" buffer types for matrices (AMX tiles on recent Xeons, repacked Q8_0/Q4_0
 * for ARM dot-product/i8mm kernels, ...): the same placement llama.cpp makes for its own weights. A matrix
 * goes to the first extra type whose kernel supports a mul_mat of it, else to the device's default. */
static bool extra_buft_supports(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft, const struct ggml_tensor * w,
                                int64_t rows) {
    struct ggml_init_params params = {ggml_tensor_overhead() * 4, NULL, true};
    struct ggml_context * ctx = ggml_init(params);
    if (!ctx) return false;
    struct ggml_tensor * wt = ggml_dup_tensor(ctx, w);
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], rows);
    struct ggml_tensor * op = ggml_mul_mat(ctx, wt, x);
    ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
    bool ok = false;
    if (dummy) {
        wt->buffer = dummy;
        ok = ggml_backend_dev_supports_op(dev, op);
        ggml_backend_buffer_free(dummy);
    }
    ggml_free(ctx);
    return ok;
}

static bool place_weights(gep_projector * p, ggml_backend_buffer_type_t * bufts, char * err, size_t len) {
    ggml_backend_dev_t dev = ggml_backend_get_device(p->backend);
    int n = 0;
    bufts[n++] = ggml_backend_get_default_buffer_type(p->backend);
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU && !getenv("GLM_EDGE_NO_EXTRA_BUFTS")) {
        ggml_backend_dev_get_extra_bufts_t get_extra = (ggml_backend_dev_get_extra_bufts_t)
            ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
        ggml_backend_buffer_type_t * extra = get_extra ? get_extra(dev) : NULL;
        for (; extra && *extra && n < MAX_BUFTS; extra++) {
            /* ggml's AMX tile kernels die with SIGILL where the CPU reports AMX but the hypervisor does not
             * give the guest the tile state (seen in a Firecracker VM): opt in with GLM_EDGE_CPU_AMX=1. */
            if (strcmp(ggml_backend_buft_name(*extra), "AMX") == 0 && !getenv("GLM_EDGE_CPU_AMX")) continue;
            bufts[n++] = *extra;
        }
    }
    const int64_t n_tensors = gguf_get_n_tensors(p->gguf);
    const size_t ctx_size = ggml_tensor_overhead() * (size_t)(n_tensors + 1);
    for (int b = 0; b < n; b++) {
        struct ggml_init_params params = {ctx_size, NULL, true};
        p->wctx[b] = ggml_init(params);
        if (!p->wctx[b]) {
            set_err(err, len, "out of memory");
            return false;
        }
    }
    p->n_bufs = n;
    for (int64_t i = 0; i < n_tensors; i++) {
        struct ggml_tensor * src = ggml_get_tensor(p->meta, gguf_get_tensor_name(p->gguf, i));
        int slot = -1;
        for (int k = 0; k < T_COUNT; k++) {
            if (p->w[k] == src) slot = k;
        }
        if (slot < 0) continue; /* a tensor this runtime does not use */
        int b = 0;
        for (int e = 1; e < n && src->ne[1] > 1; e++) {
            if (extra_buft_supports(dev, bufts[e], src, p->chunk)) {
                b = e;
                break;
            }
        }
        struct ggml_tensor * t = ggml_dup_tensor(p->wctx[b], src);
        ggml_set_name(t, ggml_get_name(src));
        p->w[slot] = t;
    }
    return true;
}

static bool load_weights(gep_projector * p, const char * path, char * err, size_t len) {
    ggml_backend_buffer_type_t bufts[MAX_BUFTS];
    if (!place_weights(p, bufts, err, len)) return false;
    size_t names_used = 0;
    for (int b = 0; b < p->n_bufs; b++) {
        if (!ggml_get_first_tensor(p->wctx[b])) continue;
        p->wbuf[b] = ggml_backend_alloc_ctx_tensors_from_buft(p->wctx[b], bufts[b]);
        if (!p->wbuf[b]) {
            set_err(err, len, "%s: could not allocate %.1f MiB for the projector weights in %s", path,
                    ggml_backend_alloc_ctx_tensors_from_buft_size(p->wctx[b], bufts[b]) / 1048576.0,
                    ggml_backend_buft_name(bufts[b]));
            return false;
        }
        ggml_backend_buffer_set_usage(p->wbuf[b], GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        int w = snprintf(p->buft_names + names_used, sizeof p->buft_names - names_used, "%s%s",
                         names_used ? "," : "", ggml_backend_buft_name(bufts[b]));
        if (w > 0 && (size_t)w < sizeof p->buft_names - names_used) names_used += (size_t)w;
    }

    FILE * f = fopen(path, "rb");
    if (!f) {
        set_err(err, len, "%s: cannot open the projector file", path);
        return false;
    }
    bool ok = true;
    void * tmp = NULL;
    size_t tmp_size = 0;
    const size_t data_offset = gguf_get_data_offset(p->gguf);
    for (int k = 0; ok && k < T_COUNT; k++) {
        struct ggml_tensor * t = p->w[k];
        if (!t) continue;
        const int64_t i = gguf_find_tensor(p->gguf, TENSOR_NAMES[k]);
        const size_t n = ggml_nbytes(t);
        if (i < 0 || gguf_get_tensor_size(p->gguf, i) != n) {
            set_err(err, len, "%s: tensor %s has an inconsistent size", path, TENSOR_NAMES[k]);
            ok = false;
            break;
        }
        if (fseeko(f, (off_t)(data_offset + gguf_get_tensor_offset(p->gguf, i)), SEEK_SET) != 0) {
            set_err(err, len, "%s: cannot seek to tensor %s (truncated file?)", path, TENSOR_NAMES[k]);
            ok = false;
            break;
        }
        /* host buffers of the plain layout take the bytes directly; others (device memory, repacked or
         * AMX layouts) convert them in ggml_backend_tensor_set */
        const bool direct = ggml_backend_buffer_get_type(t->buffer) == bufts[0] && ggml_backend_buft_is_host(bufts[0]);
        void * dst = t->data;
        if (!direct) {
            if (n > tmp_size) {
                free(tmp);
                tmp = malloc(n);
                tmp_size = tmp ? n : 0;
            }
            if (!tmp) {
                set_err(err, len, "%s: out of host memory reading tensor %s", path, TENSOR_NAMES[k]);
                ok = false;
                break;
            }
            dst = tmp;
        }
        if (fread(dst, 1, n, f) != n) {
            set_err(err, len, "%s: file ends inside tensor %s (truncated file)", path, TENSOR_NAMES[k]);
            ok = false;
            break;
        }
        if (!direct) ggml_backend_tensor_set(t, tmp, 0, n);
    }
    free(tmp);
    fclose(f);
    return ok;
}

/* --- graph --------------------------------------------------------------------------------------------- */

static struct ggml_tensor * linear(struct ggml_context * ctx, struct ggml_tensor * x, struct ggml_tensor * w,
                                   struct ggml_tensor * b) {
    struct ggml_tensor * y = ggml_mul_mat(ctx, w, x);
    return b ? ggml_add(ctx, y, b) : y;
}

static struct ggml_cgraph * build_graph(gep_projector * p, int64_t rows, struct ggml_context ** out_ctx) {
    struct ggml_init_params params = {p->graph_mem_size, p->graph_mem, true};
    struct ggml_context * ctx = ggml_init(params);
    if (!ctx) return NULL;
    struct ggml_cgraph * gf = ggml_new_graph_custom(ctx, GRAPH_NODES, false);
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, p->merge * p->merge * p->hidden, rows);
    ggml_set_name(x, "input");
    ggml_set_input(x);
    struct ggml_tensor * h = linear(ctx, x, p->w[T_DS_W], p->w[T_DS_B]);
    h = linear(ctx, h, p->w[T_PROJ_W], p->w[T_PROJ_B]);
    h = ggml_norm(ctx, h, p->eps);
    h = ggml_add(ctx, ggml_mul(ctx, h, p->w[T_LN_W]), p->w[T_LN_B]);
    h = ggml_gelu_erf(ctx, h);
    struct ggml_tensor * gate = linear(ctx, h, p->w[T_GATE_W], p->w[T_GATE_B]);
    struct ggml_tensor * up = linear(ctx, h, p->w[T_UP_W], p->w[T_UP_B]);
    struct ggml_tensor * y = linear(ctx, ggml_swiglu_split(ctx, gate, up), p->w[T_DOWN_W], p->w[T_DOWN_B]);
    ggml_set_name(y, "output");
    ggml_set_output(y);
    ggml_build_forward_expand(gf, y);
    *out_ctx = ctx;
    return gf;
}

static bool reserve(gep_projector * p, char * err, size_t len) {
    struct ggml_context * ctx = NULL;
    struct ggml_cgraph * gf = build_graph(p, p->chunk, &ctx);
    bool ok = gf && ggml_backend_sched_reserve(p->sched, gf);
    if (ctx) ggml_free(ctx);
    if (!ok) {
        set_err(err, len, "could not reserve compute buffers for %lld merged rows on %s (out of memory?)",
                (long long)p->chunk, p->backend_name);
    }
    return ok;
}

/* --- public API ---------------------------------------------------------------------------------------- */

gep_projector * gep_load(const char * path, const char * device, int n_threads, char * err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!path) {
        set_err(err, err_len, "no projector path given");
        return NULL;
    }
    ggml_backend_dev_t dev = pick_device(device, err, err_len);
    if (!dev) return NULL;

    gep_projector * p = calloc(1, sizeof *p);
    if (!p) {
        set_err(err, err_len, "out of memory");
        return NULL;
    }
    p->chunk = DEFAULT_CHUNK;
    struct gguf_init_params gparams = {true, &p->meta};
    p->gguf = gguf_init_from_file(path, gparams);
    if (!p->gguf) {
        FILE * f = fopen(path, "rb");
        if (f) fclose(f);
        set_err(err, err_len, f ? "%s: not a readable GGUF file" : "%s: projector file is missing", path);
        goto fail;
    }
    if (!read_metadata(p, path, err, err_len) || !check_tensors(p, path, err, err_len)) goto fail;

    p->backend = ggml_backend_dev_init(dev, NULL);
    if (!p->backend) {
        set_err(err, err_len, "ggml could not initialise device %s (%s)", ggml_backend_dev_name(dev),
                ggml_backend_dev_description(dev));
        goto fail;
    }
    snprintf(p->backend_name, sizeof p->backend_name, "%s", ggml_backend_name(p->backend));
    snprintf(p->device_desc, sizeof p->device_desc, "%s", ggml_backend_dev_description(dev));
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
        p->cpu = p->backend;
    } else {
        p->cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
        if (!p->cpu) {
            set_err(err, err_len, "ggml could not initialise the CPU backend");
            goto fail;
        }
    }
    if (n_threads > 0) {
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(p->cpu));
        ggml_backend_set_n_threads_t set_threads =
            (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
        if (set_threads) set_threads(p->cpu, n_threads);
    }
    if (!load_weights(p, path, err, err_len)) goto fail;

    ggml_backend_t backends[2] = {p->backend, p->cpu};
    const int n_backends = p->cpu == p->backend ? 1 : 2;
    p->sched = ggml_backend_sched_new(backends, NULL, n_backends, GRAPH_NODES, false, false);
    if (!p->sched) {
        set_err(err, err_len, "ggml could not create a scheduler on %s", p->backend_name);
        goto fail;
    }
    p->graph_mem_size = ggml_tensor_overhead() * GRAPH_NODES + ggml_graph_overhead_custom(GRAPH_NODES, false);
    p->graph_mem = malloc(p->graph_mem_size);
    if (!p->graph_mem) {
        set_err(err, err_len, "out of memory");
        goto fail;
    }
    if (!reserve(p, err, err_len)) goto fail;
    return p;

fail:
    gep_free(p);
    return NULL;
}

int gep_run(gep_projector * p, const float * in, int64_t n_rows, float * out) {
    if (!p) return -1;
    p->err[0] = 0;
    const int64_t group = p->merge * p->merge;
    if (!in || !out) {
        set_err(p->err, ERR_LEN, "null input or output buffer");
        return -1;
    }
    if (n_rows <= 0 || n_rows % group) {
        set_err(p->err, ERR_LEN, "projector input has %lld rows, expected a positive multiple of %lld",
                (long long)n_rows, (long long)group);
        return -1;
    }
    const int64_t merged = n_rows / group, in_width = group * p->hidden;
    for (int64_t start = 0; start < merged; start += p->chunk) {
        const int64_t rows = merged - start < p->chunk ? merged - start : p->chunk;
        struct ggml_context * ctx = NULL;
        struct ggml_cgraph * gf = build_graph(p, rows, &ctx);
        if (!gf) {
            set_err(p->err, ERR_LEN, "could not build the projector graph");
            return -1;
        }
        ggml_backend_sched_reset(p->sched);
        if (!ggml_backend_sched_alloc_graph(p->sched, gf)) {
            ggml_free(ctx);
            set_err(p->err, ERR_LEN, "could not allocate the projector graph on %s", p->backend_name);
            return -1;
        }
        struct ggml_tensor * x = ggml_graph_get_tensor(gf, "input");
        struct ggml_tensor * y = ggml_graph_get_tensor(gf, "output");
        ggml_backend_tensor_set(x, in + start * in_width, 0, ggml_nbytes(x));
        enum ggml_status status = ggml_backend_sched_graph_compute(p->sched, gf);
        if (status != GGML_STATUS_SUCCESS) {
            ggml_free(ctx);
            set_err(p->err, ERR_LEN, "projector graph failed on %s: %s", p->backend_name, ggml_status_to_string(status));
            return -1;
        }
        ggml_backend_tensor_get(y, out + start * p->out, 0, ggml_nbytes(y));
        ggml_free(ctx);
    }
    ggml_backend_sched_reset(p->sched);
    return 0;
}

const char * gep_last_error(const gep_projector * p) { return p ? p->err : "null projector handle"; }

void gep_free(gep_projector * p) {
    if (!p) return;
    if (p->sched) ggml_backend_sched_free(p->sched);
    if (p->cpu && p->cpu != p->backend) ggml_backend_free(p->cpu);
    if (p->backend) ggml_backend_free(p->backend);
    for (int i = 0; i < p->n_bufs; i++) {
        if (p->wbuf[i]) ggml_backend_buffer_free(p->wbuf[i]);
        if (p->wctx[i]) ggml_free(p->wctx[i]);
    }
    if (p->meta) ggml_free(p->meta);
    if (p->gguf) gguf_free(p->gguf);
    free(p->graph_mem);
    free(p);
}

const char * gep_backend_name(const gep_projector * p) { return p ? p->backend_name : ""; }
const char * gep_device_description(const gep_projector * p) { return p ? p->device_desc : ""; }
int64_t gep_hidden_size(const gep_projector * p) { return p ? p->hidden : 0; }
int64_t gep_out_hidden_size(const gep_projector * p) { return p ? p->out : 0; }
int64_t gep_intermediate_size(const gep_projector * p) { return p ? p->inter : 0; }
int64_t gep_merge_size(const gep_projector * p) { return p ? p->merge : 0; }
float gep_layer_norm_eps(const gep_projector * p) { return p ? p->eps : 0.0f; }
size_t gep_weight_bytes(const gep_projector * p) {
    size_t n = 0;
    for (int i = 0; p && i < p->n_bufs; i++) n += p->wbuf[i] ? ggml_backend_buffer_get_size(p->wbuf[i]) : 0;
    return n;
}
const char * gep_weight_buffers(const gep_projector * p) { return p ? p->buft_names : ""; }
int64_t gep_chunk_rows(const gep_projector * p) { return p ? p->chunk : 0; }
int gep_n_tensors(const gep_projector * p) { return p ? (int)gguf_get_n_tensors(p->gguf) : 0; }

const char * gep_tensor_name(const gep_projector * p, int i) {
    if (!p || i < 0 || i >= gep_n_tensors(p)) return NULL;
    return gguf_get_tensor_name(p->gguf, i);
}

const char * gep_tensor_type(const gep_projector * p, int i) {
    if (!p || i < 0 || i >= gep_n_tensors(p)) return NULL;
    return ggml_type_name(gguf_get_tensor_type(p->gguf, i));
}
