// A kube-controller-manager for tests: the stock command, with the Job controller's pod-failure
// backoff (a package variable, 10 s doubling) shortened so failure-path tests take seconds.
package main

import (
	"os"
	"time"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
	jobcontroller "k8s.io/kubernetes/pkg/controller/job"
)

func main() {
	jobcontroller.DefaultJobPodFailureBackOff = 200 * time.Millisecond
	jobcontroller.MaxJobPodFailureBackOff = 2 * time.Second
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
