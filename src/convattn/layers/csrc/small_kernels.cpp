// One translation unit for the two small kernel files: parsing ATen's headers is most of a kernel's build,
// so dwconv.cpp and posmix.cpp share one parse (each keeps its namespace and its operator registrations).
#include "dwconv.cpp"
#include "posmix.cpp"
