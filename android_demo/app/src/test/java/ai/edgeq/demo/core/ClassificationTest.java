package ai.edgeq.demo.core;

import static org.junit.Assert.assertEquals;

import java.util.Arrays;
import java.util.List;
import org.junit.Test;

public class ClassificationTest {
    @Test
    public void softmaxSumsToOneAndSurvivesLargeLogits() {
        double[] p = Classification.softmax(new float[] {1000f, 999f, -1000f});
        assertEquals(1.0, p[0] + p[1] + p[2], 1e-12);
        assertEquals(1.0 / (1.0 + Math.exp(-1.0)), p[0], 1e-12);
        assertEquals(0.0, p[2], 1e-300);
    }

    @Test
    public void topKIsBestFirstAndTiesGoToTheLowerIndex() {
        List<String> labels = Arrays.asList("a", "b", "c", "d");
        List<Classification.Prediction> top = Classification.topK(new float[] {0f, 2f, 2f, 1f}, labels, 3);
        assertEquals(1, top.get(0).index);
        assertEquals(2, top.get(1).index);
        assertEquals(3, top.get(2).index);
        assertEquals("b", top.get(0).label);
        assertEquals(3, Classification.topK(new float[] {0f, 1f, 2f}, labels, 5).size());
    }

    @Test
    public void labelsAreOnePerLineWithTrailingBlanksDropped() {
        assertEquals(Arrays.asList("T-shirt/top", "Trouser"), Classification.parseLabels("T-shirt/top\r\nTrouser\n\n"));
        assertEquals(Arrays.asList("a", "", "c"), Classification.parseLabels("a\n\nc\n"));
    }
}
