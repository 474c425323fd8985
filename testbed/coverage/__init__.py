"""Which kernel code the workloads executed: function coverage on any kernel (ftrace), line
and branch coverage on a gcov kernel, the outputs CI engines read, and a patch's coverage."""
