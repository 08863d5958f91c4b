// Encoded Transform worker (RTCRtpScriptTransform) on the video sender: passes every encoded frame through
// unchanged and tells the page its RTP timestamp, which is what the gateway decodes as pts (FrameMeta.pts).
onrtctransform = (event) => {
  const { readable, writable } = event.transformer;
  readable
    .pipeThrough(
      new TransformStream({
        transform(frame, controller) {
          const rtp = frame.getMetadata().rtpTimestamp ?? frame.timestamp;
          self.postMessage({ rtp, codecKey: frame.type === "key" });
          controller.enqueue(frame);
        },
      }),
    )
    .pipeTo(writable);
};
