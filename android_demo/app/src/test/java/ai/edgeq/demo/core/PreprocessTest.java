package ai.edgeq.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;

import java.util.Arrays;
import org.junit.Test;

/** Properties of the preprocessing; ParityTest checks the values against Pillow and numpy. */
public class PreprocessTest {
    private static int[] gray(int w, int h, int value) {
        int[] argb = new int[w * h];
        Arrays.fill(argb, 0xff000000 | value << 16 | value << 8 | value);
        return argb;
    }

    @Test
    public void aConstantImageStaysConstantThroughResizeAndCrop() {
        Preprocess pre = new Preprocess(24, 24, 3, 27, 1f / 255f, new float[] {0.5f, 0.5f, 0.5f},
                new float[] {0.25f, 0.25f, 0.25f});
        float[] out = pre.apply(gray(61, 40, 200), 61, 40);
        float expected = (200 * (1f / 255f) - 0.5f) / 0.25f;
        for (float v : out) {
            assertEquals(expected, v, 0f);
        }
        assertEquals(3 * 24 * 24, out.length);
    }

    @Test
    public void grayscaleUsesPillowsLumaWeights() {
        Preprocess pre = new Preprocess(1, 1, 1, 0, 1f, new float[] {0f}, new float[] {1f});
        assertArrayEquals(new float[] {76f}, pre.apply(new int[] {0xffff0000}, 1, 1), 0f); // 255·19595/65536, rounded
        assertArrayEquals(new float[] {150f}, pre.apply(new int[] {0xff00ff00}, 1, 1), 0f);
        assertArrayEquals(new float[] {29f}, pre.apply(new int[] {0xff0000ff}, 1, 1), 0f);
    }

    @Test
    public void halvingWeighsThreePixelsAsPillowDoes() {
        int[] plane = {0, 100, 200, 255}; // Pillow: Image.fromarray(...).resize((2, 1), BILINEAR) gives 71, 209
        assertArrayEquals(new int[] {71, 209}, Preprocess.resizeBilinear(plane, 4, 1, 2, 1));
    }

    @Test
    public void rejectsAPixelCountThatIsNotTheImage() {
        Preprocess pre = new Preprocess(2, 2, 1, 0, 1f, new float[] {0f}, new float[] {1f});
        assertThrows(IllegalArgumentException.class, () -> pre.apply(new int[3], 2, 2));
    }
}
