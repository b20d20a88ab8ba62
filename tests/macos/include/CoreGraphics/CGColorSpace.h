// Stand-in for CoreGraphics' colour-space handle used by metal-cpp (see CoreFoundation.h).
#pragma once
typedef struct CGColorSpace* CGColorSpaceRef;
