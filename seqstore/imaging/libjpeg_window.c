/* Decode a window of a JPEG, through libjpeg(-turbo)'s partial decoding.
 *
 * RandomResizedCrop keeps on average about half of an image's area and then throws the rest
 * away. Decoding only the window skips the inverse DCT, upsampling and colour conversion of
 * the rows above it (jpeg_skip_scanlines) and of the columns beside it (jpeg_crop_scanline),
 * and stops reading at its last row. It combines with DCT-domain scaling (1/2, 1/4, 1/8).
 *
 * crop(data, out, top, left, height, width, scale) -> bool
 *     Writes the window's RGB pixels into ``out``, a writable C-contiguous buffer of
 *     height * width * 3 bytes. The window is in the coordinates of the image scaled by
 *     1/scale. False means "decode this some other way": a colour space other than greyscale
 *     or YCbCr (CMYK, YCCK, RGB), a window outside the image, or anything libjpeg warned or
 *     failed about while decoding the window, which the caller's full decoder reports. Data
 *     after the window is not read, so damage below it goes unnoticed here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int warned;
};

static void on_error(j_common_ptr cinfo) {
    struct error_manager *err = (struct error_manager *)cinfo->err;
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* level -1: a warning about the data (corrupt or truncated); others are trace output. */
    if (level < 0) ((struct error_manager *)cinfo->err)->warned = 1;
}

/* Everything that runs without the GIL: no Python calls. 1 on success. */
static int decode_window(const unsigned char *src, size_t len, unsigned char *dst, JDIMENSION top,
                         JDIMENSION left, JDIMENSION height, JDIMENSION width, unsigned int scale) {
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    /* volatile: modified after setjmp and read after a longjmp */
    JSAMPLE *volatile row = NULL;
    volatile int ok = 0;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.warned = 0;
    if (setjmp(err.jump) == 0) {
        jpeg_create_decompress(&cinfo);
        jpeg_mem_src(&cinfo, src, (unsigned long)len);
        jpeg_read_header(&cinfo, TRUE);
        if (cinfo.jpeg_color_space == JCS_GRAYSCALE || cinfo.jpeg_color_space == JCS_YCbCr) {
            cinfo.out_color_space = JCS_RGB;
            cinfo.scale_num = 1;
            cinfo.scale_denom = scale;
            jpeg_start_decompress(&cinfo);
            JDIMENSION out_h = cinfo.output_height, out_w = cinfo.output_width;
            if (top < out_h && height <= out_h - top && left < out_w && width <= out_w - left) {
                /* Two columns more on each side where the image has them: the upsampler
                 * treats the first and last columns it decodes as the image's edges, which
                 * changes their chroma when they are not. */
                JDIMENSION room = out_w - (left + width);
                JDIMENSION pad = left < 2 ? left : 2;
                JDIMENSION x = left - pad;
                JDIMENSION w = width + pad + (room < 2 ? room : 2);
                if (w < out_w) jpeg_crop_scanline(&cinfo, &x, &w);
                /* x moved left to an iMCU edge and w grew to cover the window */
                size_t shift = (size_t)(left - x) * 3, line = (size_t)width * 3;
                row = (JSAMPLE *)malloc((size_t)w * 3);
                if (row != NULL) {
                    if (top > 0) jpeg_skip_scanlines(&cinfo, top);
                    JDIMENSION y = 0;
                    for (; y < height; y++) {
                        JSAMPROW rows[1] = {row};
                        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) break;
                        memcpy(dst + (size_t)y * line, row + shift, line);
                    }
                    ok = y == height;
                }
            }
        }
    }
    jpeg_destroy_decompress(&cinfo); /* also after an error: frees what libjpeg allocated */
    free(row);
    return ok && !err.warned;
}

static PyObject *crop(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, out;
    int top, left, height, width, scale;
    if (!PyArg_ParseTuple(args, "y*w*iiiii", &data, &out, &top, &left, &height, &width, &scale))
        return NULL;
    int ok = 0;
    if (top < 0 || left < 0 || height <= 0 || width <= 0 ||
        (scale != 1 && scale != 2 && scale != 4 && scale != 8)) {
        PyErr_SetString(PyExc_ValueError, "crop: bad window or scale");
    } else if (!PyBuffer_IsContiguous(&out, 'C') ||
               out.len != (Py_ssize_t)height * (Py_ssize_t)width * 3) {
        PyErr_SetString(PyExc_ValueError, "crop: out must be C-contiguous, height*width*3 bytes");
    } else {
        Py_BEGIN_ALLOW_THREADS
        ok = decode_window((const unsigned char *)data.buf, (size_t)data.len,
                           (unsigned char *)out.buf, (JDIMENSION)top, (JDIMENSION)left,
                           (JDIMENSION)height, (JDIMENSION)width, (unsigned int)scale);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (PyErr_Occurred()) return NULL;
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"crop", crop, METH_VARARGS,
     "crop(data, out, top, left, height, width, scale) -> bool: decode a window into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "libjpeg_window", "Partial JPEG decoding through libjpeg.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_libjpeg_window(void) { return PyModule_Create(&module); }
