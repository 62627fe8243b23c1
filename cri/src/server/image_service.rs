//! CRI ImageService on minipod's image store.

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use minipod_runtime::{Image, ImageError, PodError};
use tonic::{Request, Response, Status};

use super::{blocking, convert, Server};

type Reply<T> = Result<Response<T>, Status>;

fn image(i: &Image) -> cri::Image {
    // `USER[:GROUP]`: a numeric user is the uid, a name the username; the group is not
    // the image status's business.
    let user = i.config.user.as_deref().and_then(|u| u.split(':').next()).filter(|u| !u.is_empty());
    let uid = user.and_then(|u| u.parse::<i64>().ok());
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size.max(1),
        username: user.filter(|_| uid.is_none()).unwrap_or_default().to_string(),
        uid: uid.map(|value| cri::Int64Value { value }),
        spec: Some(cri::ImageSpec { image: i.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

fn reference(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image).filter(|s| !s.is_empty()).ok_or_else(|| Status::invalid_argument("no image given"))
}

#[tonic::async_trait]
impl ImageService for Server {
    async fn list_images(&self, req: Request<cri::ListImagesRequest>) -> Reply<cri::ListImagesResponse> {
        // crictl sends an empty reference when it wants them all.
        let want = req.into_inner().filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
        let images = blocking(&self.pods, move |p| match &want {
            Some(r) => match p.images().get(r) {
                Ok(i) => Ok(vec![i]),
                Err(ImageError::NotFound { .. }) => Ok(vec![]),
                Err(e) => Err(e.into()),
            },
            None => Ok(p.images().list()?),
        })
        .await?;
        Ok(Response::new(cri::ListImagesResponse { images: images.iter().map(image).collect() }))
    }

    async fn image_status(&self, req: Request<cri::ImageStatusRequest>) -> Reply<cri::ImageStatusResponse> {
        let r = reference(req.into_inner().image)?;
        // An unknown image is no image, not an error (crictl then says "no such image").
        let found = blocking(&self.pods, move |p| match p.images().get(&r) {
            Ok(i) => Ok(Some(i)),
            Err(ImageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?;
        Ok(Response::new(cri::ImageStatusResponse { image: found.as_ref().map(image), ..Default::default() }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> Reply<cri::PullImageResponse> {
        let req = req.into_inner();
        let r = reference(req.image)?;
        let opts = minipod_runtime::image::PullOptions { credentials: convert::credentials(req.auth)?, ..self.pull.clone() };
        let pulled = minipod_runtime::image::pull(self.pods.images(), &r, &opts, &mut |line| tracing::info!("{line}")).await;
        match pulled {
            Ok(img) => Ok(Response::new(cri::PullImageResponse { image_ref: img.id })),
            Err(e @ ImageError::BadReference { .. }) => Err(Status::invalid_argument(minipod_runtime::error_chain(&e))),
            Err(e) => Err(Status::unavailable(minipod_runtime::error_chain(&e))),
        }
    }

    async fn remove_image(&self, req: Request<cri::RemoveImageRequest>) -> Reply<cri::RemoveImageResponse> {
        let r = reference(req.into_inner().image)?;
        blocking(&self.pods, move |p| match p.remove_image(&r) {
            Ok(()) | Err(PodError::Image(ImageError::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<cri::ImageFsInfoRequest>) -> Reply<cri::ImageFsInfoResponse> {
        let (images, layers) = blocking(&self.pods, |p| {
            let mut layers = minipod_runtime::disk::DiskUsage::default();
            // Containers removed meanwhile simply drop out.
            for c in p.containers(None)? {
                layers = layers + p.writable_layer_usage(&c).unwrap_or_default();
            }
            Ok((super::to_cri::fs_usage(p.images().dir(), p.image_fs_usage()?), super::to_cri::fs_usage(&p.writable_layers_dir(), layers)))
        })
        .await?;
        Ok(Response::new(cri::ImageFsInfoResponse { image_filesystems: vec![images], container_filesystems: vec![layers] }))
    }
}
