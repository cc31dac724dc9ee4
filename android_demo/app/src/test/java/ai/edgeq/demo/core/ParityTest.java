package ai.edgeq.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.awt.image.BufferedImage;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.util.List;
import javax.imageio.ImageIO;
import org.junit.Test;

/**
 * The app's Java preprocessing and top-k against edgeq's Python, on the golden data `edgeq android`
 * wrote into the assets: the same floats (within 1e-6) for every bundled image, and the same top-5
 * on the outputs the .pte gave on the host. Run `edgeq android DIST android_demo/` first; the
 * -Dedgeq.assets=FOLDER property points the test at another assets folder.
 */
public class ParityTest {
    private static final File ASSETS = new File(System.getProperty("edgeq.assets", "src/main/assets"));
    private static final Golden.Assets FILES = path -> new FileInputStream(new File(ASSETS, path));

    private static Golden golden() throws IOException {
        assertTrue("no golden data in " + ASSETS.getAbsolutePath() + ": run edgeq android DIST android_demo/",
                new File(ASSETS, Golden.FOLDER + "golden.json").isFile());
        return Golden.load(FILES);
    }

    @Test
    public void javaPreprocessingMatchesPython() throws IOException {
        Golden golden = golden();
        Preprocess pre = Preprocess.fromJson(Golden.readText(FILES, "preprocess.json"));
        assertArrayEquals(golden.inputShape, pre.inputShape());
        for (int s = 0; s < golden.samples.size(); s++) {
            BufferedImage image = ImageIO.read(new File(ASSETS, golden.samples.get(s).image));
            int w = image.getWidth();
            int h = image.getHeight();
            float[] floats = pre.apply(image.getRGB(0, 0, w, h, null, 0, w), w, h);
            float[] expected = golden.inputs[s];
            assertEquals(expected.length, floats.length);
            for (int i = 0; i < floats.length; i++) {
                assertEquals(golden.samples.get(s).image + " value " + i, expected[i], floats[i], 1e-6f);
            }
        }
    }

    @Test
    public void javaTopKMatchesPython() throws IOException {
        Golden golden = golden();
        List<String> labels = Classification.parseLabels(Golden.readText(FILES, "labels.txt"));
        assertEquals(golden.numClasses, labels.size());
        for (int s = 0; s < golden.samples.size(); s++) {
            Golden.Sample sample = golden.samples.get(s);
            List<Classification.Prediction> top = Classification.topK(golden.outputs[s], labels, 5);
            assertEquals(sample.topIndices.length, top.size());
            for (int k = 0; k < top.size(); k++) {
                assertEquals(sample.image + " rank " + k, sample.topIndices[k], top.get(k).index);
                assertEquals(sample.image + " score " + k, sample.topScores[k], top.get(k).score, 1e-9);
                assertEquals(labels.get(sample.topIndices[k]), top.get(k).label);
            }
        }
    }
}
