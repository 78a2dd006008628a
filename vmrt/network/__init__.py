"""Pod networking: a netns per pod, CNI plugins, and the tap that joins it to the VM."""
