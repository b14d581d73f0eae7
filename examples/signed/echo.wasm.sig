{
  "version": 1,
  "algorithm": "ed25519",
  "claims": {
    "digest": "sha256:e8d26128873ab4ea791eeefd34e0399042e365bab76a3befdb2108a4493e99f1",
    "service": "signed-echo"
  },
  "keyId": "sha256:00227eab11c5929c87fc4abaeca4058de175c0da53b04d2f172e4377fed0b076",
  "signature": "DLU620Br+5eaNyy9yU+DrKt59L4T+jDr9r5sP7cQx2V+2DvjZgkDqiDGIlyfhlZhqEIrBlC0t9hF1Vwqt3OFBw=="
}
