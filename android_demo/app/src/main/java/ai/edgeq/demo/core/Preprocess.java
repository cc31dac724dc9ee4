package ai.edgeq.demo.core;

import java.util.List;
import java.util.Map;

/**
 * Image pixels to the model's input, exactly as edgeq's Python preprocessing does it
 * (edgeq/data.py, Preprocess.apply): grayscale or RGB, Pillow's bilinear resize (straight to the
 * input size, or shorter side to {@code resize} then a center crop), scale, normalize, CHW.
 *
 * <p>The resize reproduces Pillow's 8-bit fixed-point resampling (Resample.c), so the floats match
 * Python's bit for bit, not just approximately. Plain Java, no android.* imports: the app and the
 * JVM unit tests share it.
 */
public final class Preprocess {
    private static final int PRECISION_BITS = 32 - 8 - 2; // Pillow's fixed point for 8-bit images

    public final int height;
    public final int width;
    public final int channels; // 1: grayscale, 3: RGB
    public final int resize; // 0: resize straight to height×width; else shorter side to this, then crop
    public final float scale;
    public final float[] mean;
    public final float[] std;

    public Preprocess(int height, int width, int channels, int resize, float scale, float[] mean, float[] std) {
        if (channels != 1 && channels != 3) {
            throw new IllegalArgumentException("channels must be 1 or 3, got " + channels);
        }
        if (mean.length != channels || std.length != channels) {
            throw new IllegalArgumentException("mean and std need one value per channel (" + channels + ")");
        }
        this.height = height;
        this.width = width;
        this.channels = channels;
        this.resize = resize;
        this.scale = scale;
        this.mean = mean;
        this.std = std;
    }

    /** From edgeq's preprocess.json (what `edgeq android` writes into the app's assets). */
    public static Preprocess fromJson(String json) {
        Map<String, Object> d = Json.object(Json.parse(json));
        List<Object> size = Json.list(d.get("size"));
        Object resize = d.get("resize");
        return new Preprocess(Json.integer(size.get(0)), Json.integer(size.get(1)), Json.integer(d.get("channels")),
                resize == null ? 0 : Json.integer(resize), (float) Json.number(d.get("scale")),
                Json.floats(d.get("mean")), Json.floats(d.get("std")));
    }

    public long[] inputShape() {
        return new long[] {1, channels, height, width};
    }

    /**
     * ARGB pixels, row-major (Android's Bitmap.getPixels, java.awt's BufferedImage.getRGB), to
     * normalized CHW floats of length channels × height × width. Alpha is ignored, as Pillow's
     * convert("RGB") ignores it.
     */
    public float[] apply(int[] argb, int w, int h) {
        if (argb.length != w * h) {
            throw new IllegalArgumentException(argb.length + " pixels for a " + w + "×" + h + " image");
        }
        int[][] planes = planes(argb);
        int tw = width;
        int th = height;
        if (resize > 0) {
            double ratio = (double) resize / Math.min(w, h);
            tw = Math.max(width, (int) Math.rint(w * ratio)); // rint: Python's round() rounds half to even
            th = Math.max(height, (int) Math.rint(h * ratio));
        }
        if (tw != w || th != h) {
            for (int c = 0; c < planes.length; c++) {
                planes[c] = resizeBilinear(planes[c], w, h, tw, th);
            }
        }
        int left = (tw - width) / 2;
        int top = (th - height) / 2;
        float[] out = new float[channels * height * width];
        for (int c = 0; c < channels; c++) {
            for (int y = 0; y < height; y++) {
                for (int x = 0; x < width; x++) {
                    float v = planes[c][(top + y) * tw + left + x] * scale; // float32 ops, in numpy's order
                    out[(c * height + y) * width + x] = (v - mean[c]) / std[c];
                }
            }
        }
        return out;
    }

    private int[][] planes(int[] argb) {
        int[][] planes = new int[channels][argb.length];
        for (int i = 0; i < argb.length; i++) {
            int r = (argb[i] >> 16) & 0xff;
            int g = (argb[i] >> 8) & 0xff;
            int b = argb[i] & 0xff;
            if (channels == 1) {
                planes[0][i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // Pillow's RGB → L (ITU-R 601-2)
            } else {
                planes[0][i] = r;
                planes[1][i] = g;
                planes[2][i] = b;
            }
        }
        return planes;
    }

    /** Pillow's Image.resize(BILINEAR) on one 8-bit plane: horizontal pass, then vertical. */
    static int[] resizeBilinear(int[] in, int w, int h, int tw, int th) {
        int[] plane = in;
        int cw = w;
        if (tw != w) {
            Coefficients k = Coefficients.of(w, tw);
            int[] out = new int[tw * h];
            for (int y = 0; y < h; y++) {
                for (int x = 0; x < tw; x++) {
                    int sum = 1 << (PRECISION_BITS - 1);
                    for (int i = 0; i < k.count[x]; i++) {
                        sum += plane[y * cw + k.first[x] + i] * k.weights[x * k.size + i];
                    }
                    out[y * tw + x] = clip8(sum);
                }
            }
            plane = out;
            cw = tw;
        }
        if (th != h) {
            Coefficients k = Coefficients.of(h, th);
            int[] out = new int[cw * th];
            for (int y = 0; y < th; y++) {
                for (int x = 0; x < cw; x++) {
                    int sum = 1 << (PRECISION_BITS - 1);
                    for (int i = 0; i < k.count[y]; i++) {
                        sum += plane[(k.first[y] + i) * cw + x] * k.weights[y * k.size + i];
                    }
                    out[y * cw + x] = clip8(sum);
                }
            }
            plane = out;
        }
        return plane;
    }

    private static int clip8(int sum) {
        int v = sum >> PRECISION_BITS;
        return v < 0 ? 0 : Math.min(v, 255);
    }

    /** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter. */
    private static final class Coefficients {
        final int size;
        final int[] first;
        final int[] count;
        final int[] weights;

        private Coefficients(int size, int n) {
            this.size = size;
            first = new int[n];
            count = new int[n];
            weights = new int[n * size];
        }

        static Coefficients of(int inSize, int outSize) {
            double scale = (double) inSize / outSize;
            double filterscale = Math.max(scale, 1.0);
            double support = 1.0 * filterscale; // the bilinear filter's support is 1
            Coefficients k = new Coefficients((int) Math.ceil(support) * 2 + 1, outSize);
            double[] w = new double[k.size];
            for (int xx = 0; xx < outSize; xx++) {
                double center = (xx + 0.5) * scale;
                double ss = 1.0 / filterscale;
                int xmin = Math.max(0, (int) (center - support + 0.5)); // (int): truncation, as C's cast
                int xmax = Math.min(inSize, (int) (center + support + 0.5)) - xmin;
                double total = 0.0;
                for (int x = 0; x < xmax; x++) {
                    double t = Math.abs((x + xmin - center + 0.5) * ss);
                    w[x] = t < 1.0 ? 1.0 - t : 0.0;
                    total += w[x];
                }
                for (int x = 0; x < xmax; x++) {
                    double v = total != 0.0 ? w[x] / total : w[x];
                    k.weights[xx * k.size + x] = (int) (v < 0 ? -0.5 + v * (1 << PRECISION_BITS)
                                                              : 0.5 + v * (1 << PRECISION_BITS));
                }
                k.first[xx] = xmin;
                k.count[xx] = xmax;
            }
            return k;
        }
    }
}
