// Stand-in for the IOSurface handle used by metal-cpp (see CoreFoundation/CoreFoundation.h).
#pragma once
typedef struct __IOSurface* IOSurfaceRef;
