// One translation unit for the small kernel files: parsing ATen's headers is most of a kernel's build,
// so dwconv.cpp, posmix.cpp and dropout.cpp share one parse (each keeps its namespace and its operator
// registrations).
#include "dwconv.cpp"
#include "posmix.cpp"
#include "dropout.cpp"
