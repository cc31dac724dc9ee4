"""The Android wing: an export into the demo app's assets with golden data (`assets`), and the
offline APK build and its checks (`apk`)."""
