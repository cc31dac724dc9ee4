package ai.edgeq.demo;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import ai.edgeq.demo.core.Golden;
import android.content.Context;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import androidx.test.ext.junit.runners.AndroidJUnit4;
import androidx.test.platform.app.InstrumentationRegistry;
import java.io.IOException;
import java.io.InputStream;
import org.junit.Test;
import org.junit.runner.RunWith;

/**
 * On a device (or a device farm): the bundled model.pte, run by ExecuTorch's Android runtime on the
 * bundled golden inputs, gives edgeq's expected outputs (computed on the host by the ExecuTorch
 * runtime when `edgeq android` ran), and the device's bitmap decoding + Java preprocessing gives the
 * same floats as edgeq's Python preprocessing.
 */
@RunWith(AndroidJUnit4.class)
public class GoldenOutputsTest {
    private static Context context() {
        return InstrumentationRegistry.getInstrumentation().getTargetContext();
    }

    private static int argmax(float[] values) {
        int best = 0;
        for (int i = 1; i < values.length; i++) {
            if (values[i] > values[best]) {
                best = i;
            }
        }
        return best;
    }

    @Test
    public void modelOutputsMatchTheHostsWithinTolerance() throws IOException {
        Golden golden = Golden.load(ModelRunner.assets(context()));
        try (ModelRunner runner = ModelRunner.fromAssets(context())) {
            for (int s = 0; s < golden.samples.size(); s++) {
                float[] out = runner.forward(golden.inputs[s]);
                assertEquals(golden.numClasses, out.length);
                float[] expected = golden.outputs[s];
                for (int i = 0; i < out.length; i++) {
                    // Device kernels (arm64 XNNPACK) may round an int8 step differently from the host's.
                    assertEquals("sample " + s + " logit " + i, expected[i], out[i], golden.outputAtol);
                }
                assertEquals("sample " + s + " top-1", golden.samples.get(s).topIndices[0], argmax(out));
            }
        }
    }

    @Test
    public void devicePreprocessingMatchesPython() throws IOException {
        Golden golden = Golden.load(ModelRunner.assets(context()));
        try (ModelRunner runner = ModelRunner.fromAssets(context())) {
            BitmapFactory.Options options = new BitmapFactory.Options();
            options.inPreferredConfig = Bitmap.Config.ARGB_8888;
            options.inScaled = false;
            for (int s = 0; s < golden.samples.size(); s++) {
                Bitmap bitmap;
                try (InputStream in = context().getAssets().open(golden.samples.get(s).image)) {
                    bitmap = BitmapFactory.decodeStream(in, null, options);
                }
                int w = bitmap.getWidth();
                int h = bitmap.getHeight();
                int[] pixels = new int[w * h];
                bitmap.getPixels(pixels, 0, w, 0, 0, w, h);
                float[] floats = runner.preprocess.apply(pixels, w, h);
                assertTrue(floats.length == golden.inputs[s].length);
                for (int i = 0; i < floats.length; i++) {
                    assertEquals("sample " + s + " value " + i, golden.inputs[s][i], floats[i], 1e-6f);
                }
            }
        }
    }
}
