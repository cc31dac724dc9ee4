package ai.edgeq.demo;

import ai.edgeq.demo.core.Classification;
import android.app.Activity;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
import android.os.Bundle;
import android.provider.MediaStore;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.TextView;
import java.io.IOException;
import java.io.InputStream;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/** Pick an image (bundled sample, gallery, camera), classify it with the bundled .pte, show the top 5. */
public class MainActivity extends Activity {
    private static final int PICK_IMAGE = 1;
    private static final int TAKE_PHOTO = 2;

    private final ExecutorService worker = Executors.newSingleThreadExecutor(); // inference off the UI thread
    private ModelRunner runner;
    private String[] samples = new String[0];
    private int nextSample;
    private ImageView image;
    private TextView results;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_main);
        image = (ImageView) findViewById(R.id.image); // casts: API 23 (the offline build) has no generic findViewById
        results = (TextView) findViewById(R.id.results);
        Button sample = (Button) findViewById(R.id.sample);
        Button gallery = (Button) findViewById(R.id.gallery);
        Button camera = (Button) findViewById(R.id.camera);
        sample.setOnClickListener(v -> showNextSample());
        gallery.setOnClickListener(v -> startActivityForResult(
                new Intent(Intent.ACTION_GET_CONTENT).setType("image/*"), PICK_IMAGE));
        camera.setOnClickListener(v -> {
            Intent intent = new Intent(MediaStore.ACTION_IMAGE_CAPTURE);
            if (intent.resolveActivity(getPackageManager()) != null) {
                startActivityForResult(intent, TAKE_PHOTO);
            } else {
                results.setText(R.string.no_camera);
            }
        });
        results.setText(R.string.loading);
        worker.execute(() -> {
            try {
                runner = ModelRunner.fromAssets(this);
                samples = getAssets().list("samples");
                runOnUiThread(this::showNextSample);
            } catch (IOException | RuntimeException e) {
                runOnUiThread(() -> results.setText(getString(R.string.load_failed, e.getMessage())));
            }
        });
    }

    private void showNextSample() {
        if (samples.length == 0) {
            return;
        }
        String name = samples[nextSample++ % samples.length];
        try (InputStream in = getAssets().open("samples/" + name)) {
            classify(BitmapFactory.decodeStream(in), name);
        } catch (IOException e) {
            results.setText(e.getMessage());
        }
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (result != RESULT_OK || data == null) {
            return;
        }
        if (request == TAKE_PHOTO && data.getExtras() != null) {
            classify((Bitmap) data.getExtras().get("data"), getString(R.string.camera));
        } else if (request == PICK_IMAGE && data.getData() != null) {
            Uri uri = data.getData();
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                classify(BitmapFactory.decodeStream(in), uri.getLastPathSegment());
            } catch (IOException e) {
                results.setText(e.getMessage());
            }
        }
    }

    private void classify(Bitmap bitmap, String name) {
        if (bitmap == null || runner == null) {
            return;
        }
        image.setImageBitmap(bitmap);
        worker.execute(() -> {
            ModelRunner.Result r = runner.classify(bitmap, 5);
            StringBuilder text = new StringBuilder(name).append('\n');
            for (Classification.Prediction p : r.top) {
                text.append(String.format(Locale.ROOT, "%-16s %6.2f%%%n", p.label, 100 * p.score));
            }
            text.append(getString(R.string.timing, r.inferenceMs, r.preprocessMs));
            runOnUiThread(() -> results.setText(text));
        });
    }

    @Override
    protected void onDestroy() {
        worker.shutdown();
        if (runner != null) {
            runner.close();
        }
        super.onDestroy();
    }
}
