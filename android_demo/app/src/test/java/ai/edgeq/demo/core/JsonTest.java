package ai.edgeq.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;

import java.util.Map;
import org.junit.Test;

public class JsonTest {
    @Test
    public void readsWhatPythonsJsonWrites() {
        Map<String, Object> d = Json.object(Json.parse(
                "{\"size\": [28, 28], \"resize\": null, \"mean\": [0.286], \"scale\": 0.00392156862745098,"
                + " \"name\": \"T-shirt\\/top \\u00e9\\n\", \"ok\": true, \"nested\": {\"e\": -1.5e-3}}"));
        assertEquals(28, Json.integer(Json.list(d.get("size")).get(1)));
        assertNull(d.get("resize"));
        assertArrayEquals(new float[] {0.286f}, Json.floats(d.get("mean")), 0f);
        assertEquals(1.0 / 255.0, Json.number(d.get("scale")), 0.0);
        assertEquals("T-shirt/top \u00e9\n", d.get("name"));
        assertEquals(Boolean.TRUE, d.get("ok"));
        assertEquals(-1.5e-3, Json.number(Json.object(d.get("nested")).get("e")), 0.0);
    }

    @Test
    public void rejectsBrokenJson() {
        assertThrows(IllegalArgumentException.class, () -> Json.parse("{\"a\": [1, 2}"));
        assertThrows(IllegalArgumentException.class, () -> Json.parse("{\"a\": 1} x"));
        assertThrows(IllegalArgumentException.class, () -> Json.integer(Json.parse("1.5")));
    }
}
