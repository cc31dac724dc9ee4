package ai.edgeq.demo;

import ai.edgeq.demo.core.Classification;
import ai.edgeq.demo.core.Golden;
import ai.edgeq.demo.core.Preprocess;
import android.content.Context;
import android.graphics.Bitmap;
import android.os.SystemClock;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.List;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

/** The bundled model.pte, its preprocessing and labels, all read from assets/ (`edgeq android` puts them there). */
public final class ModelRunner implements AutoCloseable {
    public static final String MODEL = "model.pte";

    /** What one classification gave and how long it took, on this device. */
    public static final class Result {
        public final List<Classification.Prediction> top;
        public final double preprocessMs;
        public final double inferenceMs;

        Result(List<Classification.Prediction> top, double preprocessMs, double inferenceMs) {
            this.top = top;
            this.preprocessMs = preprocessMs;
            this.inferenceMs = inferenceMs;
        }
    }

    public final Preprocess preprocess;
    public final List<String> labels;
    private final Module module;

    private ModelRunner(Module module, Preprocess preprocess, List<String> labels) {
        this.module = module;
        this.preprocess = preprocess;
        this.labels = labels;
    }

    public static Golden.Assets assets(Context context) {
        return path -> context.getAssets().open(path);
    }

    public static ModelRunner fromAssets(Context context) throws IOException {
        Golden.Assets assets = assets(context);
        Preprocess preprocess = Preprocess.fromJson(Golden.readText(assets, "preprocess.json"));
        List<String> labels = Classification.parseLabels(Golden.readText(assets, "labels.txt"));
        // ExecuTorch loads (and memory-maps) a file path, not an asset stream: copy it out once.
        File model = new File(context.getFilesDir(), MODEL);
        try (InputStream in = context.getAssets().open(MODEL); OutputStream out = new FileOutputStream(model)) {
            byte[] buffer = new byte[1 << 16];
            for (int n; (n = in.read(buffer)) > 0; ) {
                out.write(buffer, 0, n);
            }
        }
        return new ModelRunner(Module.load(model.getAbsolutePath()), preprocess, labels);
    }

    /** One input (C×H×W floats) to the model's logits. */
    public float[] forward(float[] input) {
        Tensor tensor = Tensor.fromBlob(input, preprocess.inputShape());
        EValue[] outputs = module.forward(EValue.from(tensor));
        return outputs[0].toTensor().getDataAsFloatArray();
    }

    public Result classify(Bitmap bitmap, int k) {
        Bitmap argb = bitmap.getConfig() == Bitmap.Config.ARGB_8888 ? bitmap : bitmap.copy(Bitmap.Config.ARGB_8888, false);
        int w = argb.getWidth();
        int h = argb.getHeight();
        int[] pixels = new int[w * h];
        argb.getPixels(pixels, 0, w, 0, 0, w, h);
        long t0 = SystemClock.elapsedRealtimeNanos();
        float[] input = preprocess.apply(pixels, w, h);
        long t1 = SystemClock.elapsedRealtimeNanos();
        float[] logits = forward(input);
        long t2 = SystemClock.elapsedRealtimeNanos();
        return new Result(Classification.topK(logits, labels, k), (t1 - t0) / 1e6, (t2 - t1) / 1e6);
    }

    @Override
    public void close() {
        module.destroy();
    }
}
