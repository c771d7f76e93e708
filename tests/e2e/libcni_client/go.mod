module flock.test/libcniclient

go 1.19

require github.com/containernetworking/cni v1.1.2

// Debian's golang-github-appc-cni-dev ships libcni 1.1.2 as source: the
// client builds offline against it (GOPROXY=off). A directory replacement
// needs no go.sum entry, and only the packages imported are loaded, so the
// test-only requirements of the cni module (ginkgo, gomega) are never fetched.
replace github.com/containernetworking/cni => /usr/share/gocode/src/github.com/containernetworking/cni
