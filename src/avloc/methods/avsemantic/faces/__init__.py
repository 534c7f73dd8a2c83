"""Faces for human sounds: detection, person geometry, face tracks and who is speaking.

Building blocks of the training-free audio-event grounding (issue 16) for sounds that people make (speech,
singing, laughter, crying...), one module each:

* :mod:`.detect`: YuNet through ``cv2.FaceDetectorYN`` (:class:`FaceDetector`), with a rotated search;
* :mod:`.geometry`: what a detection row means; head, person and mouth boxes, the person heatmap (NumPy);
* :mod:`.tracks`: detections linked across analysed frames into tracks with persistent ids;
* :mod:`.speaker`: audio-mouth synchrony per track over a window of seconds, and a calibrated confidence;
* :mod:`.session`: the state of one video across the localize pipeline's chunks (faces, tracks, synchrony
  by time) and the speaker chosen per frame.
"""

from avloc.methods.avsemantic.faces.detect import DEFAULT_MODEL, ZOO_DIR, FaceConfig, FaceDetector, unrotate_rows
from avloc.methods.avsemantic.faces.geometry import (
    BOX,
    LEFT_EYE,
    LEFT_MOUTH,
    NOSE,
    RIGHT_EYE,
    RIGHT_MOUTH,
    ROW_LEN,
    SCORE,
    head_box,
    mouth_box,
    person_box,
    person_map,
)
from avloc.methods.avsemantic.faces.session import FaceSession, FrameFaces
from avloc.methods.avsemantic.faces.speaker import (
    SpeakerConfig,
    SpeakerPick,
    choose_speaker,
    confidence_of,
    fit_confidence,
    mouth_changes,
    speaker_scores,
    track_interval_energy,
    windowed_synchrony,
)
from avloc.methods.avsemantic.faces.tracks import FaceTrack, FaceTracker, TrackConfig, track_faces

__all__ = [
    "BOX", "DEFAULT_MODEL", "LEFT_EYE", "LEFT_MOUTH", "NOSE", "RIGHT_EYE", "RIGHT_MOUTH", "ROW_LEN", "SCORE", "ZOO_DIR",
    "FaceConfig", "FaceDetector", "FaceSession", "FaceTrack", "FaceTracker", "FrameFaces", "SpeakerConfig",
    "SpeakerPick", "TrackConfig", "choose_speaker", "confidence_of", "fit_confidence", "head_box",
    "mouth_box", "mouth_changes", "person_box", "person_map", "speaker_scores", "track_faces", "track_interval_energy",
    "unrotate_rows", "windowed_synchrony",
]
