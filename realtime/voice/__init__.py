"""Lips from the voice: log-mel features of speech → a small causal model → mouth landmarks.

Modules: ``audio_file`` (decode any sound or video file's audio, one-line errors),
``features`` (log-mel filterbank framing from python_speech_features), ``mouth`` (the
retargeter's normalised face frame in which the model predicts lip and jaw motion),
``model`` (the exported ONNX model through ``OnnxRunner``), ``driver`` (idle head motion,
blinks and the voice-driven face the retargeter follows), ``render`` (``realtime render --audio``).
"""
