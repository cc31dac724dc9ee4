package ai.edgeq.demo.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * The golden data `edgeq android` bundles in assets/golden/: sample images, the floats edgeq's Python
 * preprocessing makes of them, and the outputs the .pte gave for those floats on the host
 * (ExecuTorch runtime), with Python's top-5. The JVM tests check the Java preprocessing and top-k
 * against it; the instrumentation test checks the device's outputs against it.
 */
public final class Golden {
    /** Opens a file under the assets folder: the APK's AssetManager on a device, a folder on the JVM. */
    public interface Assets {
        InputStream open(String path) throws IOException;
    }

    /** One bundled image and what Python made of it. */
    public static final class Sample {
        public final String image;
        public final Integer label; // null when the export's data had no labels
        public final int[] topIndices;
        public final double[] topScores;

        Sample(String image, Integer label, int[] topIndices, double[] topScores) {
            this.image = image;
            this.label = label;
            this.topIndices = topIndices;
            this.topScores = topScores;
        }
    }

    public static final String FOLDER = "golden/";

    public final long[] inputShape;
    public final int numClasses;
    public final double outputAtol;
    public final List<Sample> samples;
    public final float[][] inputs; // per sample, C×H×W
    public final float[][] outputs; // per sample, numClasses logits

    private Golden(long[] inputShape, int numClasses, double outputAtol, List<Sample> samples, float[][] inputs,
                   float[][] outputs) {
        this.inputShape = inputShape;
        this.numClasses = numClasses;
        this.outputAtol = outputAtol;
        this.samples = samples;
        this.inputs = inputs;
        this.outputs = outputs;
    }

    public static Golden load(Assets assets) throws IOException {
        Map<String, Object> d = Json.object(Json.parse(readText(assets, FOLDER + "golden.json")));
        List<Object> shape = Json.list(d.get("input_shape"));
        long[] inputShape = new long[shape.size()];
        int perInput = 1;
        for (int i = 0; i < inputShape.length; i++) {
            inputShape[i] = Json.integer(shape.get(i));
            perInput *= i == 0 ? 1 : (int) inputShape[i];
        }
        int numClasses = Json.integer(d.get("num_classes"));
        List<Sample> samples = new ArrayList<>();
        for (Object item : Json.list(d.get("samples"))) {
            Map<String, Object> s = Json.object(item);
            List<Object> top = Json.list(s.get("top5"));
            int[] idx = new int[top.size()];
            double[] score = new double[top.size()];
            for (int i = 0; i < idx.length; i++) {
                Map<String, Object> t = Json.object(top.get(i));
                idx[i] = Json.integer(t.get("index"));
                score[i] = Json.number(t.get("score"));
            }
            Object label = s.get("label");
            samples.add(new Sample((String) s.get("image"), label == null ? null : Json.integer(label), idx, score));
        }
        float[][] inputs = split(readFloats(assets, FOLDER + d.get("inputs")), samples.size(), perInput);
        float[][] outputs = split(readFloats(assets, FOLDER + d.get("outputs")), samples.size(), numClasses);
        return new Golden(inputShape, numClasses, Json.number(d.get("output_atol")),
                Collections.unmodifiableList(samples), inputs, outputs);
    }

    public static String readText(Assets assets, String path) throws IOException {
        return new String(readBytes(assets, path), StandardCharsets.UTF_8);
    }

    /** Little-endian float32, as numpy's astype("<f4").tobytes() writes them. */
    public static float[] readFloats(Assets assets, String path) throws IOException {
        byte[] bytes = readBytes(assets, path);
        float[] out = new float[bytes.length / 4];
        ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    public static byte[] readBytes(Assets assets, String path) throws IOException {
        try (InputStream in = assets.open(path)) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[1 << 16];
            for (int n; (n = in.read(buffer)) > 0; ) {
                out.write(buffer, 0, n);
            }
            return out.toByteArray();
        }
    }

    private static float[][] split(float[] all, int n, int each) {
        if (all.length != n * each) {
            throw new IllegalArgumentException(all.length + " floats, expected " + n + " × " + each);
        }
        float[][] out = new float[n][each];
        for (int i = 0; i < n; i++) {
            System.arraycopy(all, i * each, out[i], 0, each);
        }
        return out;
    }
}
