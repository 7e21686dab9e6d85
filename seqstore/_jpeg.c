/* Decode a window of a JPEG, through libjpeg(-turbo)'s partial decoding.
 *
 * RandomResizedCrop keeps on average about half of an image's area and then throws the rest
 * away. Decoding only the window skips the inverse DCT, upsampling and colour conversion of
 * the rows above it (jpeg_skip_scanlines) and of the columns beside it (jpeg_crop_scanline),
 * and stops reading at its last row. It combines with DCT-domain scaling (1/2, 1/4, 1/8).
 *
 * crop(data, top, left, height, width, scale) -> (bytearray, height, width) or None
 *     The window is in the coordinates of the image scaled by 1/scale. The result holds
 *     height * width * 3 bytes of RGB. None means "decode this some other way": a colour
 *     space other than greyscale or YCbCr (CMYK, YCCK, RGB), or anything libjpeg warned or
 *     failed about (truncated or corrupt data), which the caller's full decoder reports.
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

static PyObject *crop(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    int top, left, height, width, scale;
    if (!PyArg_ParseTuple(args, "y*iiiii", &data, &top, &left, &height, &width, &scale))
        return NULL;
    if (top < 0 || left < 0 || height <= 0 || width <= 0 ||
        (scale != 1 && scale != 2 && scale != 4 && scale != 8)) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "crop: bad window or scale");
        return NULL;
    }

    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    /* volatile: modified after setjmp and read after a longjmp */
    PyObject *volatile out = NULL;
    JSAMPLE *volatile row = NULL;
    volatile int ok = 0;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.warned = 0;

    Py_BEGIN_ALLOW_THREADS
    if (setjmp(err.jump) == 0) {
        jpeg_create_decompress(&cinfo);
        jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        if (cinfo.jpeg_color_space == JCS_GRAYSCALE || cinfo.jpeg_color_space == JCS_YCbCr) {
            cinfo.out_color_space = JCS_RGB;
            cinfo.scale_num = 1;
            cinfo.scale_denom = (unsigned int)scale;
            jpeg_start_decompress(&cinfo);
            if ((JDIMENSION)(top + height) <= cinfo.output_height &&
                (JDIMENSION)(left + width) <= cinfo.output_width) {
                /* Two columns more on each side where the image has them: the upsampler
                 * treats the first and last columns it decodes as the image's edges, which
                 * changes their chroma when they are not. */
                JDIMENSION room = cinfo.output_width - (JDIMENSION)(left + width);
                JDIMENSION pad = left < 2 ? (JDIMENSION)left : 2;
                JDIMENSION x = (JDIMENSION)left - pad;
                JDIMENSION w = (JDIMENSION)width + pad + (room < 2 ? room : 2);
                if (w < cinfo.output_width) jpeg_crop_scanline(&cinfo, &x, &w);
                /* x moved left to an iMCU edge and w grew to cover the window */
                size_t shift = (size_t)(left - (int)x) * 3, line = (size_t)width * 3;
                row = (JSAMPLE *)malloc((size_t)w * 3);
                Py_BLOCK_THREADS
                out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(line * (size_t)height));
                Py_UNBLOCK_THREADS
                if (row != NULL && out != NULL) {
                    unsigned char *dst = (unsigned char *)PyByteArray_AS_STRING(out);
                    if (top > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
                    for (int y = 0; y < height; y++) {
                        JSAMPROW rows[1] = {row};
                        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) break;
                        memcpy(dst + (size_t)y * line, row + shift, line);
                        if (y == height - 1) ok = 1;
                    }
                }
            }
        }
    }
    jpeg_destroy_decompress(&cinfo); /* also after an error: frees what libjpeg allocated */
    Py_END_ALLOW_THREADS

    free(row);
    PyBuffer_Release(&data);
    if (!ok || err.warned) {
        Py_XDECREF(out);
        if (PyErr_Occurred()) return NULL; /* out of memory */
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Nii)", out, height, width);
}

static PyMethodDef methods[] = {
    {"crop", crop, METH_VARARGS,
     "crop(data, top, left, height, width, scale) -> (bytearray, height, width) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg", "Partial JPEG decoding through libjpeg.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
