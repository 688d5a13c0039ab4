// Command credprovider is the kubelet's own image-credential code, driven from the Rust test suite
// (tests/credential_provider.rs) to judge what the product gives the kubelet. Built by
// ../../build.sh next to kube-apiserver, on the same k8s.io/kubernetes.
//
// Two sources of credentials, each exactly as the kubelet uses it:
//
//	credprovider plugin --config F --bin-dir D --namespace NS --service-account SA --pod P --pod-uid U IMAGE...
//	    registers the exec plugins of the CredentialProviderConfig F (k8s.io/kubernetes/pkg/
//	    credentialprovider/plugin, with ServiceAccount tokens from the API server's TokenRequest,
//	    bound to the Pod P, for KEP-4412) and looks up each image in the keyring the kubelet builds
//	    for that Pod;
//	credprovider secrets --namespace NS --secret NAME IMAGE...
//	    builds the keyring the kubelet builds from a Pod's imagePullSecrets
//	    (k8s.io/kubernetes/pkg/credentialprovider/secrets) from the Secret NS/NAME in the cluster
//	    and looks up each image.
//
// Every credential found is tried at the fake cloud's registry login (--fake URL); with
// --recheck-after D, again after D (they must then be rejected: expired). One JSON line per image
// on stdout: {"image", "found", "logins": [{"valid", "principal", "instance", "validAfter"}]}. No
// credential is printed. The kubeconfig comes from --kubeconfig or $KUBECONFIG.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubernetes/pkg/credentialprovider"
	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
	"k8s.io/kubernetes/pkg/credentialprovider/secrets"
)

type login struct {
	Valid      bool   `json:"valid"`
	Principal  string `json:"principal"`
	Instance   string `json:"instance"`
	ValidAfter *bool  `json:"validAfter,omitempty"`
}

type result struct {
	Image  string  `json:"image"`
	Found  bool    `json:"found"`
	Logins []login `json:"logins"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "credprovider: "+format+"\n", args...)
	os.Exit(1)
}

// check asks the fake cloud whether the registry accepts a login (POST /_fake/registry-login).
func check(fake, username, password string) login {
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	resp, err := http.Post(fake+"/_fake/registry-login", "application/json", bytes.NewReader(body))
	if err != nil {
		fail("registry login at the fake: %v", err)
	}
	defer resp.Body.Close()
	var l login
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		fail("registry login answer: %v", err)
	}
	return l
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: credprovider plugin|secrets [flags] IMAGE...")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	fake := fs.String("fake", "", "the fake cloud's URL")
	namespace := fs.String("namespace", "", "the Pod's namespace")
	config := fs.String("config", "", "plugin: the CredentialProviderConfig file")
	binDir := fs.String("bin-dir", "", "plugin: the plugin binary directory")
	serviceAccount := fs.String("service-account", "", "plugin: the Pod's ServiceAccount")
	pod := fs.String("pod", "", "plugin: the Pod's name")
	podUID := fs.String("pod-uid", "", "plugin: the Pod's UID")
	secret := fs.String("secret", "", "secrets: the pull Secret's name")
	recheck := fs.Duration("recheck-after", 0, "try each login again after this long")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail("client: %v", err)
	}
	ctx := context.Background()

	var keyring credentialprovider.DockerKeyring
	switch mode {
	case "plugin":
		getToken := func(ns, name string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
			return client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, tr, metav1.CreateOptions{})
		}
		getSA := func(ns, name string) (*corev1.ServiceAccount, error) {
			return client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
		}
		if err := plugin.RegisterCredentialProviderPlugins(*config, *binDir, getToken, getSA); err != nil {
			fail("registering the credential provider plugins: %v", err)
		}
		keyring = plugin.NewExternalCredentialProviderDockerKeyring(*namespace, *pod, *podUID, *serviceAccount)
	case "secrets":
		s, err := client.CoreV1().Secrets(*namespace).Get(ctx, *secret, metav1.GetOptions{})
		if err != nil {
			fail("reading the pull Secret %s/%s: %v", *namespace, *secret, err)
		}
		keyring, err = secrets.MakeDockerKeyring([]corev1.Secret{*s}, &credentialprovider.BasicDockerKeyring{})
		if err != nil {
			fail("the kubelet rejects the pull Secret %s/%s: %v", *namespace, *secret, err)
		}
	default:
		fail("unknown mode %q (plugin or secrets)", mode)
	}

	type found struct {
		r     *result
		creds []credentialprovider.TrackedAuthConfig
	}
	var all []found
	for _, image := range fs.Args() {
		creds, ok := keyring.Lookup(image)
		r := &result{Image: image, Found: ok && len(creds) > 0, Logins: []login{}}
		for _, c := range creds {
			r.Logins = append(r.Logins, check(*fake, c.Username, c.Password))
		}
		all = append(all, found{r, creds})
	}
	if *recheck > 0 {
		time.Sleep(*recheck)
		for _, f := range all {
			for i, c := range f.creds {
				v := check(*fake, c.Username, c.Password).Valid
				f.r.Logins[i].ValidAfter = &v
			}
		}
	}
	out := json.NewEncoder(os.Stdout)
	for _, f := range all {
		if err := out.Encode(f.r); err != nil {
			fail("%v", err)
		}
	}
}
