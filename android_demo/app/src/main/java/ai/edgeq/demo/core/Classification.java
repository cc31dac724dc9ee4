package ai.edgeq.demo.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/** Logits to what the app shows: softmax, top-k, labels. Plain Java, shared with the JVM tests. */
public final class Classification {
    private Classification() {}

    /** One class and its softmax probability. */
    public static final class Prediction {
        public final int index;
        public final String label;
        public final double score;

        public Prediction(int index, String label, double score) {
            this.index = index;
            this.label = label;
            this.score = score;
        }

        @Override
        public String toString() {
            return String.format(java.util.Locale.ROOT, "%s %.1f%%", label, 100 * score);
        }
    }

    /** Softmax in double precision, shifted by the max so large logits don't overflow. */
    public static double[] softmax(float[] logits) {
        double max = Double.NEGATIVE_INFINITY;
        for (float v : logits) {
            max = Math.max(max, v);
        }
        double[] p = new double[logits.length];
        double sum = 0.0;
        for (int i = 0; i < logits.length; i++) {
            p[i] = Math.exp(logits[i] - max);
            sum += p[i];
        }
        for (int i = 0; i < p.length; i++) {
            p[i] /= sum;
        }
        return p;
    }

    /** The k most probable classes, best first; ties go to the lower index (as a stable sort does). */
    public static List<Prediction> topK(float[] logits, List<String> labels, int k) {
        double[] p = softmax(logits);
        Integer[] order = new Integer[p.length];
        for (int i = 0; i < p.length; i++) {
            order[i] = i;
        }
        Arrays.sort(order, (a, b) -> Double.compare(p[b], p[a])); // Arrays.sort on objects is stable
        List<Prediction> top = new ArrayList<>();
        for (int i = 0; i < Math.min(k, p.length); i++) {
            int c = order[i];
            top.add(new Prediction(c, c < labels.size() ? labels.get(c) : "class " + c, p[c]));
        }
        return Collections.unmodifiableList(top);
    }

    /** labels.txt: one label per line, in class order; blank trailing lines are ignored. */
    public static List<String> parseLabels(String text) {
        List<String> labels = new ArrayList<>();
        for (String line : text.split("\r?\n", -1)) {
            labels.add(line.trim());
        }
        while (!labels.isEmpty() && labels.get(labels.size() - 1).isEmpty()) {
            labels.remove(labels.size() - 1);
        }
        return Collections.unmodifiableList(labels);
    }
}
