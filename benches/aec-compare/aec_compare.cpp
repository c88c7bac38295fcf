// Compares echo cancellation of speexdsp and WebRTC audio processing (Debian packages)
// on a synthetic echo path. Not part of the Rust build; run ./run.sh.
// Signal: speech-like noise bursts (band-limited noise, syllable-rate envelope, pauses),
// played "far end"; microphone = far end through delay + attenuation + short reverb
// + a -60 dBFS noise floor, no near-end talker. Result: ERLE (dB) over the last half.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <speex/speex_echo.h>
#include <speex/speex_preprocess.h>
#include <webrtc/modules/audio_processing/include/audio_processing.h>
#include <webrtc/modules/interface/module_common_types.h>

static const int RATE = 48000;
static const int FRAME = 480;  // 10 ms

static std::vector<float> speechlike(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> out(n, 0.f);
  // two-pole resonators at moving "formants" over white noise
  float y1 = 0, y2 = 0, z1 = 0, z2 = 0;
  int i = 0;
  while (i < n) {
    int burst = (int)((0.3f + 0.9f * u(rng)) * RATE);
    int gap = (int)((0.1f + 0.4f * u(rng)) * RATE);
    float f1 = 300 + 600 * u(rng), f2 = 900 + 1800 * u(rng);
    for (int k = 0; k < burst && i < n; ++k, ++i) {
      float env = 0.5f - 0.5f * std::cos(2 * M_PI * 4.0 * k / RATE);  // 4 Hz syllables
      float x = g(rng);
      float r = 0.995f;
      float a1 = 2 * r * std::cos(2 * M_PI * f1 / RATE), a2 = -r * r;
      float y = x + a1 * y1 + a2 * y2; y2 = y1; y1 = y;
      float b1 = 2 * r * std::cos(2 * M_PI * f2 / RATE);
      float z = x + b1 * z1 + a2 * z2; z2 = z1; z1 = z;
      out[i] = env * (0.02f * y + 0.015f * z + 0.05f * x);
    }
    for (int k = 0; k < gap && i < n; ++k, ++i) out[i] = 0.f;
  }
  // normalise to -20 dBFS RMS over active parts
  double e = 0; int cnt = 0;
  for (float v : out) if (v != 0.f) { e += v * v; cnt++; }
  float gain = 0.1f * 32767.f / std::sqrt(e / cnt);
  for (float &v : out) v *= gain;
  return out;
}

struct Path { int delay; float gain; };
static std::vector<float> echo_path(const std::vector<float> &far, unsigned seed) {
  // direct path 30 ms at -6 dB, reverb taps up to 60 ms, noise floor -60 dBFS
  const Path taps[] = {{1440, 0.5f}, {1440 + 240, 0.12f}, {1440 + 528, -0.08f},
                       {1440 + 1104, 0.05f}, {1440 + 1776, -0.03f}, {1440 + 2880, 0.015f}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 32.767f);
  std::vector<float> mic(far.size(), 0.f);
  for (size_t n = 0; n < far.size(); ++n) {
    float s = g(rng);
    for (auto &t : taps) if (n >= (size_t)t.delay) s += t.gain * far[n - t.delay];
    mic[n] = s;
  }
  return mic;
}

static int16_t clip(float v) { return (int16_t)std::max(-32768.f, std::min(32767.f, std::round(v))); }

static double erle(const std::vector<int16_t> &mic, const std::vector<int16_t> &out) {
  double a = 0, b = 0;
  for (size_t n = mic.size() / 2; n < mic.size(); ++n) { a += (double)mic[n] * mic[n]; b += (double)out[n] * out[n]; }
  return 10 * std::log10(a / std::max(b, 1.0));
}

// Near-end kept during double talk: least-squares gain of the output onto the near-end
// talker over the last 5 s (0 dB = untouched, negative = the canceller ate the talker).
static std::vector<float> g_near;
static double near_kept(const std::vector<int16_t> &out) {
  // best over output lags 0..20 ms (a processor may delay its output)
  double best = 1e-6;
  size_t start = out.size() * 3 / 4;
  for (int lag = 0; lag <= 960; lag += 1) {
    double on = 0, nn = 0;
    for (size_t n = start; n + lag < out.size(); ++n) { on += out[n + lag] * (double)g_near[n]; nn += (double)g_near[n] * g_near[n]; }
    best = std::max(best, on / nn);
  }
  return 20 * std::log10(best);
}

static std::vector<int16_t> run_speex(const std::vector<int16_t> &far, const std::vector<int16_t> &mic, int frame, int tail, bool pre) {
  SpeexEchoState *st = speex_echo_state_init(frame, tail);
  int rate = RATE; speex_echo_ctl(st, SPEEX_ECHO_SET_SAMPLING_RATE, &rate);
  SpeexPreprocessState *pp = speex_preprocess_state_init(frame, RATE);
  speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_ECHO_STATE, st);
  std::vector<int16_t> out(mic.size());
  for (size_t i = 0; i + frame <= mic.size(); i += frame) {
    speex_echo_cancellation(st, &mic[i], &far[i], &out[i]);
    if (pre) speex_preprocess_run(pp, &out[i]);
  }
  speex_preprocess_state_destroy(pp); speex_echo_state_destroy(st);
  return out;
}

static std::vector<int16_t> run_webrtc(const std::vector<int16_t> &far, const std::vector<int16_t> &mic, int delay_ms,
                                      webrtc::EchoCancellation::SuppressionLevel lvl, bool ns) {
  webrtc::Config cfg;
  cfg.Set<webrtc::ExtendedFilter>(new webrtc::ExtendedFilter(true));
  cfg.Set<webrtc::DelayAgnostic>(new webrtc::DelayAgnostic(false));
  webrtc::AudioProcessing *apm = webrtc::AudioProcessing::Create(cfg);
  apm->echo_cancellation()->Enable(true);
  apm->echo_cancellation()->set_suppression_level(lvl);
  apm->noise_suppression()->Enable(ns);
  std::vector<int16_t> out(mic.size());
  webrtc::StreamConfig sc(RATE, 1, false);
  std::vector<float> fb(FRAME), rb(FRAME);
  for (size_t i = 0; i + FRAME <= mic.size(); i += FRAME) {
    for (int k = 0; k < FRAME; ++k) { rb[k] = far[i + k] / 32768.f; fb[k] = mic[i + k] / 32768.f; }
    float *rp = rb.data(), *fp = fb.data();
    int e = apm->ProcessReverseStream(&rp, sc, sc, &rp);
    if (e != 0) { fprintf(stderr, "reverse failed %d\n", e); exit(1); }
    apm->set_stream_delay_ms(delay_ms);
    e = apm->ProcessStream(&fp, sc, sc, &fp);
    if (e != 0) { fprintf(stderr, "process failed %d\n", e); exit(1); }
    for (int k = 0; k < FRAME; ++k) out[i + k] = clip(fb[k] * 32768.f);
  }
  delete apm;
  return out;
}

struct Result { double erle, kept; };
template <class F> static Result measure(F f, const std::vector<int16_t> &far, const std::vector<int16_t> &mic, const std::vector<int16_t> &mic_dt) {
  Result r; r.erle = erle(mic, f(far, mic));
  // ERLE is measured on 10..15 s only for the double-talk run; here use the echo-only run.
  r.kept = near_kept(f(far, mic_dt));
  return r;
}

int main() {
  const int secs = 20;
  auto farf = speechlike(RATE * secs, 1);
  auto micf = echo_path(farf, 2);
  auto nearf = speechlike(RATE * secs, 3);
  g_near.assign(nearf.size(), 0.f);
  for (size_t n = nearf.size() * 3 / 4; n < nearf.size(); ++n) g_near[n] = nearf[n];
  std::vector<int16_t> far(farf.size()), mic(micf.size()), mic_dt(micf.size());
  for (size_t i = 0; i < far.size(); ++i) { far[i] = clip(farf[i]); mic[i] = clip(micf[i]); mic_dt[i] = clip(micf[i] + g_near[i]); }
  printf("%-56s %10s %14s\n", "configuration (48 kHz; echo 30 ms/-6 dB + reverb to 90 ms)", "ERLE dB", "near kept dB");
  auto row = [&](const char *name, Result r) { printf("%-56s %10.1f %14.1f\n", name, r.erle, r.kept); };
  using V = std::vector<int16_t>;
  row("speexdsp echo only, 10 ms frames, 200 ms tail", measure([](const V &a, const V &b) { return run_speex(a, b, 480, 9600, false); }, far, mic, mic_dt));
  row("speexdsp echo only, 20 ms frames, 200 ms tail", measure([](const V &a, const V &b) { return run_speex(a, b, 960, 9600, false); }, far, mic, mic_dt));
  row("speexdsp echo + preprocess (residual echo + NS), 10 ms", measure([](const V &a, const V &b) { return run_speex(a, b, 480, 9600, true); }, far, mic, mic_dt));
  row("speexdsp echo + preprocess (residual echo + NS), 20 ms", measure([](const V &a, const V &b) { return run_speex(a, b, 960, 9600, true); }, far, mic, mic_dt));
  row("webrtc 0.3 AEC moderate, delay hint 30 ms", measure([](const V &a, const V &b) { return run_webrtc(a, b, 30, webrtc::EchoCancellation::kModerateSuppression, false); }, far, mic, mic_dt));
  row("webrtc 0.3 AEC high, delay hint 30 ms", measure([](const V &a, const V &b) { return run_webrtc(a, b, 30, webrtc::EchoCancellation::kHighSuppression, false); }, far, mic, mic_dt));
  row("webrtc 0.3 AEC high + NS, delay hint 30 ms", measure([](const V &a, const V &b) { return run_webrtc(a, b, 30, webrtc::EchoCancellation::kHighSuppression, true); }, far, mic, mic_dt));
  row("webrtc 0.3 AEC moderate, delay hint 0 ms (wrong)", measure([](const V &a, const V &b) { return run_webrtc(a, b, 0, webrtc::EchoCancellation::kModerateSuppression, false); }, far, mic, mic_dt));
  return 0;
}
